"""Pure loss-recovery state for the client session: RTT estimator, reorder window, retry budget.

No sockets and no clocks: every method takes ``now`` (seconds on a monotonic clock). The
session (udp_price.client.session) owns one of each and feeds them every reply, because every
reply echoes the transmission it answers and so is an unambiguous RTT sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_BACKED_OFF_RTO_S = 60.0
"""Ceiling for the backed-off RTO (RFC 6298 2.5 allows a maximum of at least 60 s)."""


@dataclass
class RttEstimator:
    """RFC 6298 smoothed RTT with the backed-off RTO kept until a new sample arrives (5.5).

    Samples come from every reply, retransmitted or not: the echoed transmission number says
    which transmission a reply answers, so Karn's ambiguity does not arise (RFC 9002 5.1).
    """

    initial_rto_s: float = 0.25
    min_rto_s: float = 0.05
    srtt: float | None = None
    rttvar: float = 0.0
    min_rtt: float | None = None
    latest_rtt: float = 0.0
    samples: int = 0
    backoff: int = 0
    """Timeouts since the last sample: the RTO doubles per timeout and stays doubled (RFC 6298 5.5)."""
    alpha: float = field(default=1 / 8, repr=False)
    beta: float = field(default=1 / 4, repr=False)
    granularity_s: float = field(default=0.001, repr=False)

    def on_sample(self, rtt_s: float, per_rtt: int = 1) -> None:
        """One RTT measurement. ``per_rtt``: how many samples arrive per round trip (requests in
        flight); the gains are divided by it (RFC 7323 appendix G), or with 64 requests in flight
        the estimator would forget a round trip's worth of history within one round trip."""
        rtt_s = max(rtt_s, 0.0)
        n = max(1, per_rtt)
        self.latest_rtt = rtt_s
        self.min_rtt = rtt_s if self.min_rtt is None else min(self.min_rtt, rtt_s)
        if self.srtt is None:
            self.srtt, self.rttvar = rtt_s, rtt_s / 2
        else:
            alpha, beta = self.alpha / n, self.beta / n
            self.rttvar = (1 - beta) * self.rttvar + beta * abs(self.srtt - rtt_s)
            self.srtt = (1 - alpha) * self.srtt + alpha * rtt_s
        self.samples += 1
        self.backoff = 0  # a fresh measurement replaces the backed-off value (RFC 6298 5.7 spirit)

    @property
    def base_rto(self) -> float:
        """SRTT + 4 RTTVAR (RFC 6298 2.3), or the initial RTO before any sample, floored."""
        if self.srtt is None:
            return max(self.initial_rto_s, self.min_rto_s)
        return max(self.min_rto_s, self.srtt + max(self.granularity_s, 4 * self.rttvar))

    @property
    def rto(self) -> float:
        """The RTO in force: the base doubled once per timeout since the last sample."""
        backed_off: float = self.base_rto * 2**self.backoff
        return min(backed_off, max(MAX_BACKED_OFF_RTO_S, self.base_rto))

    def on_timeout(self, cap_s: float) -> None:
        """A retransmission timer fired: back off (RFC 6298 5.5), but not beyond ``cap_s`` or the base."""
        if self.base_rto * 2 ** (self.backoff + 1) <= max(cap_s, self.base_rto):
            self.backoff += 1


@dataclass
class ReorderWindow:
    """RACK's reorder window (RFC 8985 6.2): min_RTT / 4 to start, grown when a retransmission
    is proven spurious, halved after ``persist`` loss recoveries without one (RFC 8985 resets it
    after 16; halving keeps a path that reorders all the time from relearning it every time).

    RFC 8985 grows the window in steps of min_RTT / 4 and caps it at SRTT. Here a spurious
    retransmission comes with an exact measurement (the late reply's own RTT), so the window
    jumps to that reply's lateness beyond the RTT the detector assumed, with a margin: on
    loopback behind a proxy holding datagrams 100 ms, min_RTT / 4 steps would need hundreds of
    spurious retransmissions to get there.
    """

    persist: int = 16
    margin: float = 1.25
    extent_s: float = 0.0
    """Largest lateness seen in a spurious retransmission, seconds; 0 = none recently."""
    recoveries_left: int = 0
    last_recovery_at: float = float("-inf")

    def window(self, rtt: RttEstimator) -> float:
        base = max(0.001, (rtt.min_rtt or 0.0) / 4)
        return max(base, min(self.extent_s * self.margin, 2 * rtt.rto))

    def on_spurious(self, lateness_s: float) -> None:
        """A reply to an earlier transmission arrived ``lateness_s`` after the loss detector
        assumed it would: that much reordering is normal on this path."""
        self.extent_s = max(self.extent_s, lateness_s)
        self.recoveries_left = self.persist

    def on_recovery(self, now: float, rto: float) -> None:
        """A loss was repaired and no spurious retransmission came with it. Repairs less than an
        RTO apart count as one recovery episode: TCP counts episodes, not segments, and with many
        requests in flight under steady loss every round trip repairs several."""
        if now < self.last_recovery_at + rto:
            return
        self.last_recovery_at = now
        if self.recoveries_left > 0:
            self.recoveries_left -= 1
            if self.recoveries_left == 0:
                # Halve rather than forget: reordering that stopped fades out in a few rounds,
                # reordering that goes on is not relearned from scratch (and paid for) each time.
                self.extent_s /= 2
                self.recoveries_left = self.persist if self.extent_s > 0.001 else 0


@dataclass
class RetryBudget:
    """Retransmissions as a rate, as Finagle's RetryBudget and gRPC's retry throttling do.

    Tokens accrue at ``per_second`` (from 0 when the session opens), plus ``ratio`` per new
    request; each retransmission spends one. Every reply earns ``per_reply`` back (3: enough for
    50% loss each way, where a request needs 1 / 0.25 - 1 = 3 retransmissions on average), and a
    retransmission proven spurious is refunded. Against a silent server nothing is earned, so
    retransmissions stay under ratio x requests + per_second x run time (20% + 10/s). An empty
    budget only delays a retransmission: the session never fails a request for budget while
    its deadline has not passed.
    """

    per_second: float = 10.0
    ratio: float = 0.2
    per_reply: float = 3.0
    cap: float = 200.0
    tokens: float = 0.0
    spent: int = 0
    denied: int = 0
    clock: float | None = None
    """The latest time this budget has seen (tokens have accrued up to it)."""

    def _accrue(self, now: float) -> None:
        if self.clock is not None and now > self.clock:
            self.tokens = min(self.cap, self.tokens + (now - self.clock) * self.per_second)
        if self.clock is None or now > self.clock:
            self.clock = now

    def start(self, now: float) -> None:
        self.clock = now

    def on_request(self, now: float) -> None:
        self._accrue(now)
        self.tokens = min(self.cap, self.tokens + self.ratio)

    def on_reply(self, now: float) -> None:
        self._accrue(now)
        self.tokens = min(self.cap, self.tokens + self.per_reply)

    def refund(self) -> None:
        self.tokens = min(self.cap, self.tokens + 1.0)

    def try_spend(self, now: float) -> bool:
        """True if one retransmission may go now (and pays for it)."""
        self._accrue(now)
        if self.tokens >= 1.0 - 1e-9:
            self.tokens -= 1.0
            self.spent += 1
            return True
        self.denied += 1
        return False

    def next_token_at(self) -> float:
        """When the next whole token will have accrued, if nothing else earns one."""
        now = self.clock or 0.0
        missing = max(0.0, 1.0 - self.tokens)
        return now + (missing / self.per_second if self.per_second > 0 else 3600.0)
