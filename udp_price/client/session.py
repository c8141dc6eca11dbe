"""The quote client's sans-I/O session: every decision about sending, waiting and giving up.

In the style of aioquic's ``QuicConnection``: no sockets, no clocks, no sleeping. The shell
(udp_price.client.api) calls

    events = session.send(request, now)          # queue a new request
    events = session.datagram_received(data, now)
    events = session.error_received(now)         # ICMP port unreachable on the connected socket
    events = session.handle_timer(now)           # at or after session.timer()
    for data in session.datagrams_to_send(): sock.send(data)

and resolves each ``Answered`` / ``Failed`` event (udp_price.client.events). Loss is decided in
udp_price.client.loss_detection, a reply's fit in udp_price.client.reply_checks; this module keeps
the pending requests, the congestion window's queue, the retry budget (it only delays), BUSY,
ICMP (before any reply: nothing listens; after: a restart, so pause and probe) and every give-up.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque

from udp_price.client.congestion import CongestionController
from udp_price.client.events import Answered, Event, Failed, Pending
from udp_price.client.loss_detection import LossDetection, Transmissions
from udp_price.client.recovery import RetryBudget, RttEstimator
from udp_price.client.reply_checks import UNREADABLE, predates_lists, transmission_violation, violation
from udp_price.client.retry import Outcome, RetryPolicy
from udp_price.wire import (
    BatchRequest,
    ListRequest,
    MalformedDatagram,
    Reply,
    Request,
    Status,
    decode_any_reply,
    encode_unnumbered,
    lines_digest,
    peek_header,
    renumbered,
    split_overload_mark,
)
from wire_format import MAX_TRANSMISSION, VERSION

REFUSED_GRACE_S = 0.25
"""ICMP errors before any reply fail requests only once the session is this old: a server that
is still starting gets a moment, a port nobody listens on fails well inside a second."""
REFUSED_LIMIT = 2
"""ICMP port-unreachable errors, with no reply ever, that mean nothing listens there."""
RECENT_IDS = 4096
"""Finished requests remembered, to count late replies and prove retransmissions spurious."""


class ClientSession:
    """All pending requests of one client and the state they share (RTT, budget, server health)."""

    def __init__(
        self,
        policy: RetryPolicy | None = None,
        now: float = 0.0,
        budget: RetryBudget | None = None,
        congestion: CongestionController | None = None,
    ) -> None:
        self.policy = policy or RetryPolicy()
        self.max_attempts = min(self.policy.max_attempts, MAX_TRANSMISSION)
        self.rtt = RttEstimator(initial_rto_s=self.policy.initial_timeout_s, min_rto_s=self.policy.min_timeout_s)
        self.loss = LossDetection(self.rtt, self.policy.initial_timeout_s, self.policy.max_timeout_s, now)
        self.budget = budget or RetryBudget()
        self.budget.start(now)
        self.stats: Counter[str] = Counter()
        self.opened_at = now
        self.last_answer_at: float | None = None
        self.unreachable: Outcome | None = None
        """Set when the server is judged gone (REFUSED or UNREACHABLE); cleared by any reply."""
        self.keep_verdict = False
        """True (bulk): once the server is judged gone, new requests fail at once, unsent, instead of
        each waiting out its deadline. False: the next request is tried afresh (outlives an outage)."""
        self.probing = False
        """A server that answered sent ICMP errors (a restart): hold new requests, probe with the oldest."""
        self.icmp_since_answer = 0
        self._pending: dict[int, Pending] = {}
        self._lost: OrderedDict[int, str] = OrderedDict()  # request id -> why it is to be sent again
        self._held: deque[int] = deque()
        self.congestion = congestion  # None: every request goes at once (the caller bounds them)
        if congestion is not None:
            congestion.stats = self.stats
        self._queued: dict[int, None] = {}  # ids waiting for the congestion window, oldest first
        self._exhausted: dict[int, float] = {}
        self._recent: OrderedDict[int, Transmissions] = OrderedDict()
        self._out: list[bytes] = []
        self._outstanding_since = now
        self._last_probe_at = now

    # ------------------------------------------------------------ API

    @property
    def pending(self) -> int:
        return len(self._pending)

    def outstanding(self) -> list[Request]:
        """The requests still waiting for an answer, oldest first."""
        return [p.request for p in self._pending.values()]

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet finished: what the congestion window bounds."""
        return len(self._pending) - len(self._queued)

    @property
    def queued(self) -> int:
        """Requests waiting for the congestion window (not sent, their deadline not started)."""
        return len(self._queued)

    def knows(self, request_id: int) -> bool:
        """Is this id pending or recently finished? (New ids must be neither.)"""
        return request_id in self._pending or request_id in self._recent

    def datagrams_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def send(self, request: Request, now: float) -> list[Event]:
        """Start a request (its id must be fresh). Fails at once if the server is known gone."""
        if request.request_id in self._pending:
            raise ValueError(f"request id {request.request_id:016x} is already pending")
        if self.unreachable is not None and self.keep_verdict:
            return [Failed(request.request_id, self.unreachable, 0, 0.0, self.icmp_since_answer > 0)]
        datagram = encode_unnumbered(request)
        digest = lines_digest(datagram) if isinstance(request, BatchRequest) else 0
        if not self._pending:
            self._outstanding_since = now
        p = Pending(request=request, datagram=datagram, digest=digest, started_at=now, deadline=float("inf"))
        self._pending[request.request_id] = p
        self.budget.on_request(now)
        if self.congestion is None:
            self._start(p, now)
        else:
            self._queued[request.request_id] = None
            self._admit_queued(now)
        return []

    def _start(self, p: Pending, now: float) -> None:
        """Admit a request: its deadline and latency run from here (docs/congestion.md says why)."""
        p.started_at = now
        p.deadline = now + self.policy.deadline_s if self.policy.deadline_s is not None else float("inf")
        if self.probing:
            self._held.append(p.request.request_id)
        else:
            self._transmit(p, now, "first")

    def _admit_queued(self, now: float) -> None:
        """Send waiting requests, oldest first, while the congestion window has room."""
        while self._queued and (self.congestion is None or self.in_flight < self.congestion.window):
            rid = next(iter(self._queued))
            del self._queued[rid]
            self._start(self._pending[rid], now)

    def timer(self) -> float | None:
        """When handle_timer must next be called (monotonic seconds), or None when idle."""
        if not self._pending:
            return None
        times = [next(iter(self._pending.values())).deadline, *self._exhausted.values()]
        if self.policy.deadline_s is not None:
            times.append(self._silence_start() + self.policy.deadline_s)
        times += self.loss.timers()
        if not self.loss.in_flight and self.probing and self._held:
            times.append(self._last_probe_at + self.rtt.rto)
        if self._lost and not self.probing:
            times.append(max(min(self._pending[r].not_before for r in self._lost), self.budget.next_token_at()))
        if self.icmp_since_answer and self.last_answer_at is None:
            times.append(self.opened_at + REFUSED_GRACE_S)
        return min(times)

    def handle_timer(self, now: float) -> list[Event]:
        events: list[Event] = []
        if self._check_refused(now, events) or self._check_silence(now, events):
            return events
        self._expire(now, events)
        self._on_rto(now)
        self._detect_losses(now)
        self._retransmit_lost(now, events)
        self._admit_queued(now)
        return events

    def error_received(self, now: float) -> list[Event]:
        """The kernel reported ICMP port unreachable for a datagram we sent to the server."""
        self.stats["icmp_errors"] += 1
        self.icmp_since_answer += 1
        events: list[Event] = []
        if self.last_answer_at is None:
            self._check_refused(now, events)
        elif not self.probing:
            self.probing = True  # it answered before: a restart, not a wrong port
            self.stats["probing_episodes"] += 1
        return events

    def datagram_received(self, data: bytes, now: float) -> list[Event]:
        data, marked = split_overload_mark(data)
        try:
            reply = decode_any_reply(data)
        except MalformedDatagram as e:
            return self._on_undecodable(data, e, now)
        p = self._pending.get(reply.request_id)
        if p is None:
            self._on_late(reply, now)
            return []
        tx = getattr(reply, "transmission", 0)
        why = violation(p.request, p.digest, reply) or transmission_violation(p.request, len(p.sent_at), tx)
        if why is not None:
            self.stats[f"ignored.invalid.{why}"] += 1
            return []
        if self.congestion is not None and p.sent_at:  # it counts into self.stats (cc.*)
            self.congestion.on_reply(now, p.sent_at, tx, reply.status is Status.BUSY, marked, self.in_flight - 1)
        self._server_alive(now)
        if reply.status is not Status.BUSY:
            # A BUSY server is asking for less traffic: it must not pay for more retransmissions.
            self.budget.on_reply(now)
        if self.loss.on_reply(p, tx, now, self.in_flight, latest=True):
            self._spurious()
        events: list[Event] = []
        if reply.status is Status.BUSY:
            self._on_busy(p, reply, now)
        elif reply.status in UNREADABLE and not predates_lists(p.request, reply):
            # Our bytes arrived damaged (we never send what the server cannot read): send again.
            self.stats["nacks"] += 1
            p.error_status = reply.status
            self._mark_lost(p.request.request_id, "nack")
        else:
            self.stats["accepted"] += 1
            self._finish(p.request.request_id, tx)
            events.append(Answered(p.request.request_id, reply, len(p.sent_at), now - p.started_at))
        self._detect_losses(now)
        self._retransmit_lost(now, events)
        self._admit_queued(now)
        return events

    # ------------------------------------------------------------ sending

    def _transmit(self, p: Pending, now: float, why: str) -> None:
        # List pages are not numbered (Karn's rule applies); the rest say which transmission they are.
        data = p.datagram if isinstance(p.request, ListRequest) else renumbered(p.datagram, len(p.sent_at) + 1)
        p.sent_at.append(now)
        p.why.append(why)
        self.loss.on_sent(p.request.request_id, p)
        self.stats["sent"] += 1
        if why != "first":
            self.stats["retransmissions"] += 1
            self.stats[f"retransmissions.{why}"] += 1
        self._out.append(data)

    def _mark_lost(self, rid: int, why: str) -> None:
        self.loss.forget(rid)
        self._lost[rid] = why

    def _retransmit_lost(self, now: float, events: list[Event]) -> None:
        for rid, why in list(self._lost.items()):
            p = self._pending[rid]
            if now < p.not_before or (self.probing and why != "rto"):
                continue  # BUSY said wait; while probing only the RTO's probe goes out
            if len(p.sent_at) >= self.max_attempts:
                del self._lost[rid]
                # Out of attempts, but any transmission may still be answered: on a slow path or
                # after RACK spent the attempts at loopback pace, the answer can come until the deadline.
                self._exhausted[rid] = p.deadline
                continue
            if not self.budget.try_spend(now):
                self.stats["budget_waits"] += 1
                return
            del self._lost[rid]
            self._transmit(p, now, why)

    def _detect_losses(self, now: float) -> None:
        # A restarting server's silence is no loss signal: while probing only the RTO sends.
        for rid in self.loss.detect(now, paused=self.probing):
            self._lost[rid] = "rack"

    def _on_rto(self, now: float) -> None:
        """The RTO resends the oldest request and the overdue ones (LossDetection.on_rto says which);
        while probing a restarted server with nothing in flight, a held request goes out as the probe."""
        lately = self.last_answer_at is not None and now - self.last_answer_at < self.rtt.rto
        lost = self.loss.on_rto(now, answered_lately=lately, probe_only=self.probing)
        if lost:
            self.stats["timeouts"] += 1
            for rid in reversed(lost):
                self._lost[rid] = "rto"
                self._lost.move_to_end(rid, last=False)  # the oldest goes first
        elif not self.loss.in_flight and self.probing and self._held and now >= self._last_probe_at + self.rtt.rto:
            self.rtt.on_timeout(self.policy.max_timeout_s)
            self._last_probe_at = now
            self._transmit(self._pending[self._held.popleft()], now, "first")

    # ------------------------------------------------------------ replies

    def _server_alive(self, now: float) -> None:
        self.last_answer_at = now
        self.icmp_since_answer = 0
        self.unreachable = None
        if self.probing:
            self.probing = False
            while self._held:
                self._transmit(self._pending[self._held.popleft()], now, "first")

    def _spurious(self) -> None:
        self.stats["spurious"] += 1
        self.budget.refund()

    def _on_busy(self, p: Pending, reply: Reply, now: float) -> None:
        self.stats["busy"] += 1
        retry_after_s = getattr(reply, "retry_after_ms", 0) / 1000
        p.not_before = now + retry_after_s
        self.loss.on_busy(now, retry_after_s)
        self._mark_lost(p.request.request_id, "busy")

    def _finish(self, rid: int, tx: int) -> None:
        """Forget a request (answered by transmission ``tx``, or 0: failed or unnumbered)."""
        p = self._pending.pop(rid)
        self._queued.pop(rid, None)
        self.loss.forget(rid)
        self._lost.pop(rid, None)
        self._exhausted.pop(rid, None)
        self.loss.on_recovered(p, tx)
        self._recent[rid] = Transmissions(p.sent_at, p.why, p.replied)
        if len(self._recent) > RECENT_IDS:
            self._recent.popitem(last=False)

    def _on_late(self, reply: Reply, now: float) -> None:
        done = self._recent.get(reply.request_id)
        if done is None:
            self.stats["ignored.unknown_id"] += 1
            return
        self.stats["ignored.duplicate"] += 1
        tx = getattr(reply, "transmission", 0)
        late = 0 < tx <= len(done.sent_at) and tx not in done.replied
        if late and self.loss.on_reply(done, tx, now, len(self._pending), latest=False):
            self._spurious()

    def _on_undecodable(self, data: bytes, error: MalformedDatagram, now: float) -> list[Event]:
        header = peek_header(data)
        # peek_header answers only for a sealed datagram (length and CRC32 intact), see udp_price.wire.framing.
        if header is not None and header[0] != VERSION and header[1] in self._pending:
            # An intact reply in another protocol version to one of our ids: an older or newer server.
            self.stats["other_version_replies"] += 1
            p = self._pending[header[1]]
            self._finish(header[1], 0)
            self._admit_queued(now)
            return [
                Failed(
                    header[1], Outcome.VERSION, len(p.sent_at), now - p.started_at, False, Status.UNSUPPORTED_VERSION
                )
            ]
        self.stats[f"ignored.malformed.{error.reason}"] += 1
        return []

    # ------------------------------------------------------------ giving up

    def _silence_start(self) -> float:
        last = self.last_answer_at if self.last_answer_at is not None else self.opened_at
        return max(last, self._outstanding_since)

    def _fail_all(self, outcome: Outcome, now: float, events: list[Event]) -> None:
        for rid in list(self._pending):
            # A request whose own deadline has passed too says so (a single quote: "deadline passed").
            self._fail(rid, Outcome.DEADLINE if now >= self._pending[rid].deadline else outcome, now, events)

    def _check_refused(self, now: float, events: list[Event]) -> bool:
        if self.last_answer_at is not None or self.icmp_since_answer < REFUSED_LIMIT:
            return False
        if now < self.opened_at + REFUSED_GRACE_S:
            return False
        self.unreachable = Outcome.REFUSED
        self._fail_all(Outcome.REFUSED, now, events)
        return True

    def _check_silence(self, now: float, events: list[Event]) -> bool:
        """Nothing answered for a whole deadline while requests waited: the server is gone."""
        if self.policy.deadline_s is None or not self._pending:
            return False
        if now < self._silence_start() + self.policy.deadline_s:
            return False
        self.unreachable = Outcome.UNREACHABLE
        self._fail_all(Outcome.UNREACHABLE, now, events)
        return True

    def _expire(self, now: float, events: list[Event]) -> None:
        for rid, p in list(self._pending.items()):
            if now < p.deadline:
                break  # started in order, same deadline length: the rest expire later
            outcome = Outcome.BUDGET if rid in self._lost and self.budget.denied else Outcome.DEADLINE
            self._fail(rid, outcome, now, events)
        for rid, at in list(self._exhausted.items()):
            if now >= at:
                self._fail(rid, Outcome.TIMED_OUT, now, events)

    def _fail(self, rid: int, outcome: Outcome, now: float, events: list[Event]) -> None:
        p = self._pending[rid]
        self._finish(rid, 0)
        if rid in self._held:
            self._held.remove(rid)
        events.append(
            Failed(rid, outcome, len(p.sent_at), now - p.started_at, self.icmp_since_answer > 0, p.error_status)
        )
