"""Pure retry logic for the quote client: policy, RTT estimator, per-request exchange state.

No sockets, no clocks, no sleeping: every method takes ``now`` (seconds on a
monotonic clock) and returns what to send and when to wake up, as aioquic's
``handle_timer(now)`` and dnspython's backoff do. The shells in udp_client.py
own the socket and the timers.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RetryPolicy:
    """How hard the client tries. All times in seconds."""

    initial_timeout_s: float = 0.25
    """Timeout of the first attempt before any RTT has been measured."""
    max_attempts: int = 20
    """Attempts in all, the first included. CoAP stops at 5, but 20 cheap 76-byte attempts let a quote
    survive 30% loss each way (51% per round trip) with a failure chance of 0.51**20 ~ 1e-6; the
    deadline, the ICMP check in the client and the bulk retry budget keep a dead server from costing more."""
    deadline_s: float | None = 10.0
    """One overall deadline covering every attempt of a request; None waits for max_attempts only."""
    backoff_factor: float = 2.0
    """Each retransmission waits this much longer than the previous attempt."""
    random_factor: float = 1.5
    """Timeouts are drawn uniformly in [t, t * random_factor], as CoAP (RFC 7252 4.8) does,
    so that clients that lost packets together do not retransmit together."""
    min_timeout_s: float = 0.05
    """Floor for the adaptive timeout: loopback RTTs are microseconds, but scheduling hiccups are not."""
    max_timeout_s: float = 0.5
    """Ceiling for the backoff. A measured RTO above it wins, so slow paths still get enough time."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_timeout_s <= 0 or self.min_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        if self.max_timeout_s < self.min_timeout_s:
            raise ValueError("max_timeout_s must be >= min_timeout_s")
        if self.deadline_s is not None and self.deadline_s <= 0:
            raise ValueError("deadline_s must be positive or None")
        if self.backoff_factor < 1 or self.random_factor < 1:
            raise ValueError("backoff_factor and random_factor must be >= 1")

    def attempt_timeout(self, base_s: float, attempt: int, rng: random.Random) -> float:
        """Timeout for ``attempt`` (1-based) given the current base timeout, jitter included."""
        grown = base_s * self.backoff_factor ** (attempt - 1)
        capped = min(max(grown, self.min_timeout_s), max(self.max_timeout_s, base_s))
        return capped * rng.uniform(1.0, self.random_factor)


@dataclass
class RttEstimator:
    """RFC 6298 smoothed RTT. Feed it only samples from never-retransmitted requests (Karn)."""

    initial_rto_s: float = 0.25
    srtt: float | None = None
    rttvar: float = 0.0
    min_rtt: float | None = None
    samples: int = 0
    alpha: float = field(default=1 / 8, repr=False)
    beta: float = field(default=1 / 4, repr=False)
    granularity_s: float = field(default=0.001, repr=False)

    def on_sample(self, rtt_s: float) -> None:
        self.min_rtt = rtt_s if self.min_rtt is None else min(self.min_rtt, rtt_s)
        if self.srtt is None:
            self.srtt, self.rttvar = rtt_s, rtt_s / 2
        else:
            self.rttvar = (1 - self.beta) * self.rttvar + self.beta * abs(self.srtt - rtt_s)
            self.srtt = (1 - self.alpha) * self.srtt + self.alpha * rtt_s
        self.samples += 1

    @property
    def reorder_window(self) -> float:
        """How much earlier than an answered request another must have been sent to count as lost:
        a quarter of the minimum RTT, at least 1 ms (RACK's reo_wnd)."""
        return max(0.001, (self.min_rtt or 0.0) / 4)

    @property
    def rto(self) -> float:
        """Retransmission timeout in seconds (not yet clamped by the policy)."""
        if self.srtt is None:
            return self.initial_rto_s
        return self.srtt + max(self.granularity_s, 4 * self.rttvar)


class Outcome(enum.Enum):
    PENDING = "pending"
    ANSWERED = "answered"
    TIMED_OUT = "timed_out"  # every attempt was used up
    DEADLINE = "deadline"  # the overall deadline passed first
    REFUSED = "refused"  # the shell gave up: ICMP says nothing listens at the server's address
    BUDGET = "retry_budget"  # the shell gave up: the client's retry budget is spent
    UNREACHABLE = "unreachable"  # the shell gave up: no reply for a long time and no budget left


@dataclass
class Exchange:
    """One logical request: its attempts, timers and outcome. Time is passed in.

    Usage: ``start(now)`` -> send; wait until ``wake_at``; ``on_timer(now)`` -> True
    means send the same datagram again; ``on_answer(now)`` when a matching reply
    arrives. The caller checks that a reply matches; this class keeps the clock.
    """

    policy: RetryPolicy
    rtt: RttEstimator
    rng: random.Random
    attempts: int = 0
    started_at: float = 0.0
    sent_at: float = 0.0
    wake_at: float = 0.0
    not_before: float = 0.0
    outcome: Outcome = Outcome.PENDING
    answered_at: float | None = None

    def start(self, now: float) -> None:
        self.started_at = now
        self._send(now)

    @property
    def deadline(self) -> float | None:
        d = self.policy.deadline_s
        return None if d is None else self.started_at + d

    def _send(self, now: float) -> None:
        self.attempts += 1
        self.sent_at = now
        timeout = self.policy.attempt_timeout(self.rtt.rto, self.attempts, self.rng)
        wake = now + timeout
        if self.deadline is not None:
            wake = min(wake, self.deadline)
        self.wake_at = wake

    def on_timer(self, now: float) -> bool:
        """Called at or after ``wake_at``. True: retransmit now. False: wait more or given up."""
        if self.outcome is not Outcome.PENDING or now < self.wake_at:
            return False
        if self.deadline is not None and now >= self.deadline:
            self.outcome = Outcome.DEADLINE
            return False
        if self.attempts >= self.policy.max_attempts:
            self.outcome = Outcome.TIMED_OUT
            return False
        if now < self.not_before:
            # The server said BUSY: hold the retransmission until its retry-after has passed.
            self.wake_at = self.not_before if self.deadline is None else min(self.not_before, self.deadline)
            return False
        self._send(now)
        return True

    def can_retransmit(self, now: float) -> bool:
        """Whether an early retransmission is allowed now (attempts, deadline and BUSY permitting)."""
        if self.outcome is not Outcome.PENDING or self.attempts >= self.policy.max_attempts:
            return False
        return now >= self.not_before and (self.deadline is None or now < self.deadline)

    def on_loss_detected(self, now: float) -> bool:
        """A request sent after this attempt has been answered, so this attempt is probably lost
        (RACK, RFC 8985): retransmit now rather than at the timer. True: send the datagram again."""
        if not self.can_retransmit(now):
            return False
        self._send(now)
        return True

    def on_busy(self, now: float, retry_after_s: float) -> None:
        """The server is rate limiting us: do not retransmit before now + retry_after_s."""
        self.not_before = now + retry_after_s
        self.wake_at = max(self.wake_at, self.not_before)
        if self.deadline is not None:
            self.wake_at = min(self.wake_at, self.deadline)

    def on_answer(self, now: float) -> None:
        """A matching reply arrived. Samples the RTT only if there was one attempt (Karn's rule)."""
        if self.outcome is not Outcome.PENDING:
            return
        self.outcome = Outcome.ANSWERED
        self.answered_at = now
        if self.attempts == 1:
            self.rtt.on_sample(now - self.sent_at)

    @property
    def done(self) -> bool:
        return self.outcome is not Outcome.PENDING

    def elapsed(self, now: float) -> float:
        end = self.answered_at if self.answered_at is not None else now
        return end - self.started_at


@dataclass
class RetryBudget:
    """Caps retransmissions across many requests, as Finagle's and Envoy's retry budgets do.

    Tokens: a reserve of ``floor`` to start, ``ratio`` per new request, ``per_answer`` per reply
    received; each retransmission spends one. Against a dead server nothing answers, so
    retransmissions stay below ratio * requests + floor (20% + 10 by default). A pure 20% budget
    would also fail rows on a merely lossy path (10% loss each way already needs ~23% retries),
    so replies, which prove the server is alive and keeping up, earn retries back.
    """

    ratio: float = 0.2
    floor: float = 10.0
    per_answer: float = 1.0
    cap: float = 1000.0
    spent: int = 0
    refused: int = 0
    _milli: int = field(default=-1, repr=False)
    """Tokens in thousandths, so that five requests at 0.2 make exactly one retry (no float drift)."""

    def __post_init__(self) -> None:
        if self._milli < 0:
            self._milli = round(self.floor * 1000)

    @property
    def tokens(self) -> float:
        return self._milli / 1000

    def _add(self, amount: float) -> None:
        self._milli = min(round(self.cap * 1000), self._milli + round(amount * 1000))

    def on_request(self) -> None:
        self._add(self.ratio)

    def on_answer(self) -> None:
        self._add(self.per_answer)

    def try_spend(self) -> bool:
        """True if one retransmission may be sent now (and pays for it)."""
        if self._milli >= 1000:
            self._milli -= 1000
            self.spent += 1
            return True
        self.refused += 1
        return False
