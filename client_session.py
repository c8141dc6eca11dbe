"""The quote client's sans-I/O session: every decision about sending, waiting and giving up.

In the style of aioquic's ``QuicConnection``: no sockets, no clocks, no sleeping. The shell
(udp_client.py) calls

    events = session.send(request, now)          # queue a new request
    events = session.datagram_received(data, now)
    events = session.error_received(now)         # ICMP port unreachable on the connected socket
    events = session.handle_timer(now)           # at or after session.timer()
    for data in session.datagrams_to_send(): sock.send(data)

and resolves each ``Answered`` / ``Failed`` event. Loss recovery, in short:

- every transmission carries its number, echoed in the reply (RFC 9002 5): each reply is an
  RTT sample (RFC 6298 estimator, backed-off RTO kept until the next sample, 5.5), and a reply
  to an earlier transmission proves the later ones spurious;
- RACK (RFC 8985): once a later transmission is answered, a request still unanswered RTT
  (at least 9/8 SRTT, RFC 9002 6.1.2) + reorder window after its own transmission is lost
  and sent again; the window grows on proven-spurious retransmissions (6.2);
- the RTO timer retransmits only the oldest request and backs off (RFC 6298 5.4, 5.5): a
  slow or dead path costs one probe per RTO, not one per request;
- the retry budget (recovery.RetryBudget) only delays retransmissions; requests fail at their
  deadline, after their last attempt, or when the server has answered nothing for a whole
  deadline (then every row fails at once);
- ICMP port unreachable: before any reply, two of them after a short grace mean nothing
  listens there (fail fast); after a reply they mean a restart: pause and probe.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field

from recovery import ReorderWindow, RetryBudget, RttEstimator
from reply_checks import UNREADABLE, violation
from retry import Outcome, RetryPolicy
from wire_format import (
    CRC_SIZE,
    MAX_TRANSMISSION,
    VERSION,
    BatchRequest,
    ListRequest,
    MalformedDatagram,
    QuoteReply,
    QuoteRequest,
    Reply,
    Request,
    Status,
    decode_any_reply,
    encode_batch_request,
    encode_list_request,
    encode_request,
    lines_digest,
    peek_header,
)

REFUSED_GRACE_S = 0.25
"""ICMP errors before any reply fail requests only once the session is this old: a server that
is still starting gets a moment, a port nobody listens on fails well inside a second."""
REFUSED_LIMIT = 2
"""ICMP port-unreachable errors, with no reply ever, that mean nothing listens there."""
RECENT_IDS = 4096
"""Finished requests remembered, to count late replies and prove retransmissions spurious."""


@dataclass(frozen=True, slots=True)
class Answered:
    request_id: int
    reply: Reply
    attempts: int
    latency_s: float


@dataclass(frozen=True, slots=True)
class Failed:
    request_id: int
    outcome: Outcome
    attempts: int
    elapsed_s: float
    refused: bool
    """ICMP port-unreachable errors were seen since the last reply."""
    status: Status | None = None
    """The error status the server kept answering (MALFORMED, UNSUPPORTED_VERSION), if any."""


Event = Answered | Failed


@dataclass(slots=True)
class _Pending:
    request: Request
    digest: int
    started_at: float
    deadline: float
    sent_at: list[float] = field(default_factory=list)
    why: list[str] = field(default_factory=list)
    """Why each transmission went out: 'first', 'rto', 'rack', 'nack' (index = number - 1)."""
    not_before: float = 0.0
    error_status: Status | None = None
    replied: set[int] = field(default_factory=set)
    """Transmission numbers whose replies arrived (each counts once as proof of a spurious retransmission)."""


@dataclass(slots=True)
class _Done:
    sent_at: list[float]
    why: list[str]
    replied: set[int]


def _predates_lists(request: Request, reply: Reply) -> bool:
    """A quote reply to a list request: a server older than list messages; that is final."""
    return isinstance(request, ListRequest) and isinstance(reply, QuoteReply)


class ClientSession:
    """All pending requests of one client and the state they share (RTT, budget, server health)."""

    def __init__(self, policy: RetryPolicy | None = None, now: float = 0.0, budget: RetryBudget | None = None) -> None:
        self.policy = policy or RetryPolicy()
        self.max_attempts = min(self.policy.max_attempts, MAX_TRANSMISSION)
        self.rtt = RttEstimator(initial_rto_s=self.policy.initial_timeout_s, min_rto_s=self.policy.min_timeout_s)
        self.reorder = ReorderWindow()
        self.budget = budget or RetryBudget()
        self.budget.start(now)
        self.stats: Counter[str] = Counter()
        self.opened_at = now
        self.last_answer_at: float | None = None
        self.unreachable: Outcome | None = None
        """Set when the server is judged gone (REFUSED or UNREACHABLE); cleared by any reply."""
        self.keep_verdict = False
        """True: once the server is judged gone, new requests fail at once without being sent (bulk
        runs set it, or every remaining row would wait out a deadline of its own). False: every
        pending request fails, but the next one is tried afresh (an interactive client outlives
        an outage)."""
        self.probing = False
        """A server that answered sent ICMP errors (a restart): hold new requests, probe with the oldest."""
        self.icmp_since_answer = 0
        self._pending: dict[int, _Pending] = {}
        self._in_flight: OrderedDict[int, _Pending] = OrderedDict()  # by last transmission, oldest first
        self._lost: OrderedDict[int, str] = OrderedDict()  # request id -> why it is to be sent again
        self._held: deque[int] = deque()
        self._exhausted: dict[int, float] = {}
        self._recent: OrderedDict[int, _Done] = OrderedDict()
        self._out: list[bytes] = []
        self._rack_xmit_ts = float("-inf")
        self._rack_rtt = 0.0
        self._reorder_at: float | None = None
        self._busy_until = 0.0
        self._outstanding_since = now
        self._last_probe_at = now
        self._learning_until: float | None = None
        """Until then (the initial RTO after the first reply) RACK waits at least the initial RTO and
        every RTT sample's excess over min_RTT counts as reordering seen: the evidence a reorder
        window grows from (a late reply) arrives one reordering delay after the first sends, and
        guessing loss before it costs a burst of spurious retransmissions."""
        self._rto_restarted_at = now
        """The RTO timer runs from the later of this and the oldest request's last transmission:
        restarted when it fires (RFC 6298 5.6), so one timeout costs one retransmission, not one
        per request sent at the same moment. Replies to other requests do not restart it: they
        acknowledge those requests only (like SACK blocks, not a cumulative ACK)."""

    # ------------------------------------------------------------ API

    @property
    def pending(self) -> int:
        return len(self._pending)

    def outstanding(self) -> list[Request]:
        """The requests still waiting for an answer, oldest first."""
        return [p.request for p in self._pending.values()]

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
        digest = lines_digest(encode_batch_request(request)) if isinstance(request, BatchRequest) else 0
        deadline = now + self.policy.deadline_s if self.policy.deadline_s is not None else float("inf")
        if not self._pending:
            self._outstanding_since = now
        p = _Pending(request, digest, now, deadline)
        self._pending[request.request_id] = p
        self.budget.on_request(now)
        if self.probing:
            self._held.append(request.request_id)
        else:
            self._transmit(p, now, "first")
        return []

    def timer(self) -> float | None:
        """When handle_timer must next be called (monotonic seconds), or None when idle."""
        if not self._pending:
            return None
        times = [next(iter(self._pending.values())).deadline, *self._exhausted.values()]
        if self.policy.deadline_s is not None:
            times.append(self._silence_start() + self.policy.deadline_s)
        if self._in_flight:
            times.append(self._rto_at())
        elif self.probing and self._held:
            times.append(self._last_probe_at + self.rtt.rto)
        if self._reorder_at is not None:
            times.append(self._reorder_at)
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
        self._reorder_at = None
        self._detect_losses(now)
        self._retransmit_lost(now, events)
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
        try:
            reply = decode_any_reply(data)
        except MalformedDatagram as e:
            return self._on_undecodable(data, e, now)
        p = self._pending.get(reply.request_id)
        if p is None:
            self._on_late(reply, now)
            return []
        why = violation(p.request, p.digest, reply)
        tx = getattr(reply, "transmission", 0)
        if why is None and not (tx <= len(p.sent_at) and (tx > 0 or isinstance(p.request, ListRequest))):
            why = "transmission_not_sent"
        if why is not None:
            self.stats[f"ignored.invalid.{why}"] += 1
            return []
        self._server_alive(now)
        self._sample(p, tx, now)
        events: list[Event] = []
        if reply.status is Status.BUSY:
            self._on_busy(p, reply, now)
        elif reply.status in UNREADABLE and not _predates_lists(p.request, reply):
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
        return events

    # ------------------------------------------------------------ sending

    def _transmit(self, p: _Pending, now: float, why: str) -> None:
        tx, request = len(p.sent_at) + 1, p.request
        if isinstance(request, QuoteRequest):
            data = encode_request(dataclasses.replace(request, transmission=tx))
        elif isinstance(request, BatchRequest):
            data = encode_batch_request(dataclasses.replace(request, transmission=tx))
        else:
            data = encode_list_request(request)  # list pages are not numbered (Karn's rule applies)
        p.sent_at.append(now)
        p.why.append(why)
        rid = p.request.request_id
        self._in_flight[rid] = p
        self._in_flight.move_to_end(rid)
        self.stats["sent"] += 1
        if why != "first":
            self.stats["retransmissions"] += 1
            self.stats[f"retransmissions.{why}"] += 1
        self._out.append(data)

    def _mark_lost(self, rid: int, why: str) -> None:
        self._in_flight.pop(rid, None)
        self._lost[rid] = why

    def _retransmit_lost(self, now: float, events: list[Event]) -> None:
        for rid, why in list(self._lost.items()):
            p = self._pending[rid]
            if now < p.not_before or (self.probing and why != "rto"):
                continue  # BUSY said wait; while probing only the RTO's probe goes out
            if len(p.sent_at) >= self.max_attempts:
                del self._lost[rid]
                self._exhausted[rid] = min(p.deadline, p.sent_at[-1] + self.rtt.rto)
                continue
            if not self.budget.try_spend(now):
                self.stats["budget_waits"] += 1
                return
            del self._lost[rid]
            self._transmit(p, now, why)

    # ------------------------------------------------------------ loss detection

    def _detect_losses(self, now: float) -> None:
        """RACK (RFC 8985 6.2): a request whose last transmission went out before the newest
        answered one, and is unanswered RTT + reorder window after it, is lost."""
        if now < self._busy_until or self.probing:
            return  # a rate limiter's silence is no loss signal; nor is a restarting server's
        # RACK waits the RTT of the newest answered transmission plus the reorder window; like
        # QUIC's time threshold (RFC 9002 6.1.2) it waits at least 9/8 SRTT, because replies queue
        # behind each other in the socket buffer and one fast sample says little about the rest.
        wait = max(self._rack_rtt, 9 / 8 * (self.rtt.srtt or 0.0)) + self.reorder.window(self.rtt)
        lost: list[int] = []
        for rid, p in self._in_flight.items():  # oldest transmission first
            sent = p.sent_at[-1]
            if sent > self._rack_xmit_ts:
                break
            lost_at = sent + self._rack_wait(wait, p.why.count("rack"), now)
            if now >= lost_at:
                lost.append(rid)
            else:  # waits differ per request, so keep scanning; wake up for the earliest
                self._reorder_at = lost_at if self._reorder_at is None else min(self._reorder_at, lost_at)
        for rid in lost:
            self._mark_lost(rid, "rack")

    def _rack_wait(self, wait: float, earlier: int, now: float) -> float:
        """How long after its last transmission RACK declares a request lost. Each further RACK
        resend of the same request waits twice as long, up to an RTO: if the last one was not
        answered in time either, a long reordering delay grows likelier than loss after loss."""
        if self._learning_until is None or now < self._learning_until:
            wait = max(wait, self.policy.initial_timeout_s)
        return float(min(wait * 2**earlier, max(wait, self.rtt.rto)))

    def _on_rto(self, now: float) -> None:
        """Retransmission timeout: back off (RFC 6298 5.5), resend the oldest request (5.4) and every
        other one sent more than the backed-off RTO ago (RFC 8985 6.3). Requests sent together
        are not all resent on the first timeout of a slow path: the backed-off RTO is longer than
        their age. While probing a restarted server only the oldest goes, as the probe."""
        if self._in_flight:
            rid, _ = next(iter(self._in_flight.items()))
            if now >= self._rto_at():
                self._rto_restarted_at = now
                self.stats["timeouts"] += 1
                self.rtt.on_timeout(self._backoff_cap())
                stale = (
                    []
                    if self.probing
                    else [r for r, p in self._in_flight.items() if p.sent_at[-1] <= now - self.rtt.rto]
                )
                for r in [rid, *stale]:
                    self._mark_lost(r, "rto")
                self._lost.move_to_end(rid, last=False)
        elif self.probing and self._held and now >= self._last_probe_at + self.rtt.rto:
            self.rtt.on_timeout(self._backoff_cap())
            self._last_probe_at = now
            self._transmit(self._pending[self._held.popleft()], now, "first")

    def _rto_at(self) -> float:
        oldest = next(iter(self._in_flight.values()))
        return max(oldest.sent_at[-1], self._rto_restarted_at) + self.rtt.rto

    def _backoff_cap(self) -> float:
        return max(self.policy.max_timeout_s, self.rtt.base_rto)

    # ------------------------------------------------------------ replies

    def _server_alive(self, now: float) -> None:
        self.last_answer_at = now
        self.icmp_since_answer = 0
        self.unreachable = None
        if self.probing:
            self.probing = False
            while self._held:
                self._transmit(self._pending[self._held.popleft()], now, "first")

    def _sample(self, p: _Pending, tx: int, now: float) -> None:
        """RTT sample from the echoed transmission; tx 0 (list pages) samples only if sent once (Karn)."""
        if tx == 0 and len(p.sent_at) != 1:
            self.budget.on_reply(now)
            return
        k = tx or 1
        sample = now - p.sent_at[k - 1]
        self._learn(sample, now)
        self.rtt.on_sample(sample, len(self._pending))
        self.budget.on_reply(now)
        self._rack_xmit_ts = max(self._rack_xmit_ts, p.sent_at[k - 1])
        self._rack_rtt = sample
        self._proves_spurious(p.sent_at, p.why, p.replied, tx, sample)

    def _learn(self, sample: float, now: float) -> None:
        """While learning the path, every sample's excess over min_RTT is reordering seen."""
        if self._learning_until is None:
            self._learning_until = now + self.policy.initial_timeout_s
        elif now < self._learning_until and self.rtt.min_rtt is not None:
            self.reorder.on_spurious(sample - self.rtt.min_rtt)

    def _proves_spurious(self, sent_at: list[float], why: list[str], replied: set[int], tx: int, sample: float) -> None:
        """A reply to transmission ``tx`` after a later one was sent: declaring ``tx`` lost was wrong,
        so the retransmission it caused was not needed (the DSACK / Eifel signal, once per ``tx``)."""
        if tx == 0 or tx in replied:
            return
        replied.add(tx)
        if tx >= len(sent_at):
            return
        self.stats["spurious"] += 1
        self.budget.refund()
        if why[tx] == "rack":  # why[tx] is the reason for transmission tx + 1
            self.reorder.on_spurious(sample - (self.rtt.min_rtt or 0.0))

    def _on_busy(self, p: _Pending, reply: Reply, now: float) -> None:
        self.stats["busy"] += 1
        retry_after_s = getattr(reply, "retry_after_ms", 0) / 1000
        p.not_before = now + retry_after_s
        # A rate limiter answers some over-limit requests and drops the rest: their silence is no loss.
        self._busy_until = max(self._busy_until, now + max(retry_after_s, self.rtt.rto))
        self._mark_lost(p.request.request_id, "busy")

    def _finish(self, rid: int, tx: int) -> None:
        """Forget a request (answered by transmission ``tx``, or 0: failed or unnumbered)."""
        p = self._pending.pop(rid)
        self._in_flight.pop(rid, None)
        self._lost.pop(rid, None)
        self._exhausted.pop(rid, None)
        if len(p.sent_at) > 1 and tx == len(p.sent_at):
            self.reorder.on_recovery(p.sent_at[-1], self.rtt.rto)
        self._recent[rid] = _Done(p.sent_at, p.why, p.replied)
        if len(self._recent) > RECENT_IDS:
            self._recent.popitem(last=False)

    def _on_late(self, reply: Reply, now: float) -> None:
        done = self._recent.get(reply.request_id)
        if done is None:
            self.stats["ignored.unknown_id"] += 1
            return
        self.stats["ignored.duplicate"] += 1
        tx = getattr(reply, "transmission", 0)
        if 0 < tx <= len(done.sent_at) and tx not in done.replied:
            sample = now - done.sent_at[tx - 1]
            self._learn(sample, now)
            self.rtt.on_sample(sample, len(self._pending))
            self._proves_spurious(done.sent_at, done.why, done.replied, tx, sample)

    def _on_undecodable(self, data: bytes, error: MalformedDatagram, now: float) -> list[Event]:
        header = peek_header(data)
        intact = len(data) > CRC_SIZE and zlib.crc32(data[:-CRC_SIZE]) == int.from_bytes(data[-CRC_SIZE:], "big")
        if header is not None and intact and header[0] != VERSION and header[1] in self._pending:
            # An intact reply in another protocol version to one of our ids: an older or newer server.
            self.stats["other_version_replies"] += 1
            p = self._pending[header[1]]
            self._finish(header[1], 0)
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
