"""Which requests are lost, and when to look again: RACK, the RTO timer and RTT sampling (pure).

The client session (udp_price.client.session) owns one ``LossDetection`` and tells it what it sends
and what is answered; it answers with the requests to resend. Time is passed in. Every reply
echoes the transmission it answers, so every reply is an RTT sample and a reply to a
transmission already declared lost proves that declaration wrong (RFC 9002 5, RFC 8985 6.2).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from udp_price.client.recovery import ReorderWindow, RttEstimator

TIME_THRESHOLD = 9 / 8
"""RACK waits at least this many SRTTs (QUIC's kTimeThreshold, RFC 9002 6.1.2): replies queue behind
each other in the socket buffer, and one fast sample says little about the rest."""

TAIL_REQUESTS = 16
"""An RTO after the server fell silent resends every overdue request only while at most this many
are in flight: the tail of a run, whose last requests a loss burst counted in datagrams would
otherwise strand. With more in flight the silence is as likely a stall (a server stopped, in a GC
pause or reloading, that keeps what it receives and answers it later) as a loss, and resending
everything would make it serve each pending request twice; then the RTO sends PTO_PROBES."""

PTO_PROBES = 2
"""Requests an RTO resends when the server fell silent with many in flight: QUIC's probe
timeout sends one or two probes (RFC 9002 6.2.4), enough to learn whether the path is back."""


@dataclass(slots=True)
class Transmissions:
    """When each transmission of one request went out and why ('first', 'rto', 'rack', 'nack',
    'busy'; index = transmission number - 1), and which transmissions were answered."""

    sent_at: list[float] = field(default_factory=list)
    why: list[str] = field(default_factory=list)
    replied: set[int] = field(default_factory=set)


class LossDetection:
    def __init__(self, rtt: RttEstimator, initial_rto_s: float, backoff_cap_s: float, now: float) -> None:
        self.rtt = rtt
        self.reorder = ReorderWindow()
        self.initial_rto_s = initial_rto_s
        self.backoff_cap_s = backoff_cap_s
        self.in_flight: OrderedDict[int, Transmissions] = OrderedDict()
        """Requests not yet declared lost, by last transmission, oldest first."""
        self.reorder_at: float | None = None
        self.busy_until = 0.0
        self._rack_xmit_ts = float("-inf")
        self._rack_rtt = 0.0
        self._rto_restarted_at = now
        """The RTO timer runs from the later of this and the oldest request's last transmission:
        restarted when it fires (RFC 6298 5.6), so one timeout costs one retransmission, not one per
        request sent at the same moment. Replies to other requests do not restart it: they
        acknowledge those requests only (like SACK blocks, not a cumulative ACK)."""
        self._rto_fired_in_silence = False
        self._learning_until: float | None = None
        """Until then (the initial RTO after the first reply) RACK waits at least the initial RTO and
        every sample's excess over min_RTT counts as reordering seen: the evidence a reorder window
        grows from (a late reply) arrives one reordering delay after the first sends, and guessing
        loss before it costs a burst of spurious retransmissions."""

    def learned(self, now: float) -> bool:
        """Has the path been watched long enough for RACK to run at its own pace?"""
        return self._learning_until is not None and now >= self._learning_until

    def on_sent(self, rid: int, t: Transmissions) -> None:
        self.in_flight[rid] = t
        self.in_flight.move_to_end(rid)

    def forget(self, rid: int) -> None:
        self.in_flight.pop(rid, None)

    def timers(self) -> list[float]:
        times = [] if self.reorder_at is None else [self.reorder_at]
        if self.in_flight:
            times.append(self.rto_at())
        return times

    def rto_at(self) -> float:
        oldest = next(iter(self.in_flight.values()))
        return max(oldest.sent_at[-1], self._rto_restarted_at) + self.rtt.rto

    # ------------------------------------------------------------ replies

    def on_reply(self, t: Transmissions, tx: int, now: float, per_rtt: int, latest: bool) -> bool:
        """A valid reply echoing transmission ``tx`` (0: unnumbered). ``latest``: the request is still
        pending (not a late reply to a finished one). True if it proves a retransmission spurious."""
        if tx == 0 and len(t.sent_at) != 1:
            return False  # unnumbered and retransmitted: which one it answers is ambiguous (Karn)
        k = tx or 1
        if self._rto_fired_in_silence:
            # The first answer after a timeout restarts the timer (RFC 6298 5.3, new data
            # acknowledged): a server resuming from a stall answers its backlog in order, and the
            # sample ends the backoff, so an RTO due at once would resend every request still queued.
            self._rto_fired_in_silence = False
            self._rto_restarted_at = now
        sample = now - t.sent_at[k - 1]
        self._learn(sample, now)
        self.rtt.on_sample(sample, per_rtt)
        if latest:
            self._rack_xmit_ts = max(self._rack_xmit_ts, t.sent_at[k - 1])
            self._rack_rtt = sample
        return self._proves_spurious(t, tx, sample)

    def _learn(self, sample: float, now: float) -> None:
        if self._learning_until is None:
            self._learning_until = now + self.initial_rto_s
        elif now < self._learning_until and self.rtt.min_rtt is not None:
            self.reorder.on_spurious(sample - self.rtt.min_rtt)

    def _proves_spurious(self, t: Transmissions, tx: int, sample: float) -> bool:
        """A reply to transmission ``tx`` after a later one was sent: declaring ``tx`` lost was wrong,
        so the retransmission it caused was not needed (the DSACK / Eifel signal, once per ``tx``)."""
        if tx == 0 or tx in t.replied:
            return False
        t.replied.add(tx)
        if tx >= len(t.sent_at):
            return False
        if t.why[tx] == "rack":  # why[tx] is the reason for transmission tx + 1
            self.reorder.on_spurious(sample - (self.rtt.min_rtt or 0.0))
        return True

    def on_recovered(self, t: Transmissions, tx: int) -> None:
        """A request was answered; a repair counts if its last transmission got the answer."""
        if len(t.sent_at) > 1 and tx == len(t.sent_at):
            self.reorder.on_recovery(t.sent_at[-1], self.rtt.rto)

    def on_busy(self, now: float, retry_after_s: float) -> None:
        # A rate limiter answers some over-limit requests and drops the rest: their silence is no loss.
        self.busy_until = max(self.busy_until, now + max(retry_after_s, self.rtt.rto))

    # ------------------------------------------------------------ declaring losses

    def detect(self, now: float, paused: bool) -> list[int]:
        """RACK (RFC 8985 6.2): requests whose last transmission went out before the newest answered
        one and are still unanswered RTT + reorder window after it. They leave ``in_flight``."""
        self.reorder_at = None
        if paused or now < self.busy_until:
            return []
        wait = max(self._rack_rtt, TIME_THRESHOLD * (self.rtt.srtt or 0.0)) + self.reorder.window(self.rtt)
        lost: list[int] = []
        for rid, t in self.in_flight.items():  # oldest transmission first
            sent = t.sent_at[-1]
            if sent > self._rack_xmit_ts:
                break
            lost_at = sent + self._rack_wait(wait, t.why.count("rack"), now)
            if now >= lost_at:
                lost.append(rid)
            else:  # waits differ per request, so keep scanning; wake up for the earliest
                self.reorder_at = lost_at if self.reorder_at is None else min(self.reorder_at, lost_at)
        for rid in lost:
            del self.in_flight[rid]
        return lost

    def _rack_wait(self, wait: float, earlier: int, now: float) -> float:
        """How long after its last transmission RACK declares a request lost. Each further RACK
        resend of the same request waits twice as long, up to an RTO: if the last one was not
        answered in time either, a long reordering delay grows likelier than loss after loss."""
        if not self.learned(now):
            wait = max(wait, self.initial_rto_s)
        return float(min(wait * 2**earlier, max(wait, self.rtt.rto)))

    def on_rto(self, now: float, answered_lately: bool, probe_only: bool = False) -> list[int]:
        """If the RTO timer has fired: back off (RFC 6298 5.5) and return the requests to resend,
        oldest first: the oldest one (5.4) and

        - while the server is answering, every other one sent more than the backed-off RTO ago
          (RFC 8985 6.3): requests sent together are not all resent on the first timeout of a
          slow path (the backed-off RTO is longer than their age), RACK repairs the rest;
        - when it has answered this session but not lately, and at most TAIL_REQUESTS are in
          flight, every one whose own timer expired (sent an RTO ago, before this backoff), as if
          each had a timer of its own (RFC 6298, CoAP RFC 7252 4.2) and as RFC 9002 6.2.4 declares
          lost what is overdue: no answers means no RACK, and one probe per backed-off RTO leaves
          the last requests of a run in a loss burst that is counted in datagrams (the fault
          proxy's, a Gilbert-Elliott channel's) with about 3 attempts in a 10 s deadline. With
          more in flight, the PTO_PROBES oldest overdue ones: a stalled server answers all of
          them late, and resending each would double its work at every resume;
        - a server never heard from, or one being probed after a restart (``probe_only``), gets
          only the one probe per RTO."""
        if not self.in_flight or now < self.rto_at():
            return []
        expired_before = now - self.rtt.rto  # each request's own timer, before the backoff
        self._rto_restarted_at = now
        self._rto_fired_in_silence = True
        self.rtt.on_timeout(self.backoff_cap_s)
        oldest = next(iter(self.in_flight))
        limit = len(self.in_flight)
        if probe_only or self.rtt.srtt is None:
            due = now - float("inf")
        elif answered_lately:
            due = now - self.rtt.rto
        else:
            due = expired_before
            limit = limit if limit <= TAIL_REQUESTS else PTO_PROBES
        lost = [oldest, *(r for r, t in self.in_flight.items() if r != oldest and t.sent_at[-1] <= due)][:limit]
        for rid in lost:
            del self.in_flight[rid]
        return lost
