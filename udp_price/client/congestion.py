"""The client's congestion window: how many requests may be in flight at once (pure, time passed in).

RFC 8085 section 3.1 asks bulk senders over UDP for congestion control. A loss-based controller
(NewReno, CUBIC) would read the fault proxy's random loss as congestion and throw away what loss
recovery earns, so this one reads only signals that mean a full queue somewhere:

- the server's explicit overload mark (bit 0x40 of a reply's kind byte), as ECN-CE is for TCP and
  QUIC (RFC 3168, RFC 9002 section 7);
- BUSY replies (the server's rate limiter asks this source for less);
- queueing delay: the RTT rising well above the path's minimum, as LEDBAT (RFC 6817) and BBR read it.

The window grows with answered requests: by one per answer in slow start (doubling per round
trip), by one per round trip afterwards (additive increase, RFC 9002 7.3.3). On a signal it is
multiplied by ``beta`` (0.5, RFC 9002 7.3.2 / RFC 3168 6.1.2), at most once per round trip: a
signal counts only for a transmission sent after the last reduction began (QUIC's recovery
period, RFC 9002 7.3.2). It never exceeds ``max_window`` (the ``--window`` flag) and never falls
below ``min_window`` (1). Random loss with a flat RTT and no mark changes nothing. docs/congestion.md
explains the choices and the measurements.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

MARK = "mark"
BUSY = "busy"
DELAY = "delay"


@dataclass(frozen=True)
class CongestionConfig:
    """The controller's knobs; times in seconds, windows in requests (one request = one datagram)."""

    max_window: int = 64
    """Never more requests in flight than this (bulk's --window)."""
    initial_window: int = 4
    """Requests in flight before anything is known (RFC 9002 7.2 starts QUIC at 10 packets; a
    request here may carry 32 rows, so start lower)."""
    min_window: int = 1
    beta: float = 0.5
    """Multiplicative decrease on a congestion signal (RFC 9002 kLossReductionFactor)."""
    target_floor_s: float = 0.025
    """Queueing delay tolerated before it counts as congestion, at least: LEDBAT's TARGET is at
    most 100 ms (RFC 6817 2.5); 25 ms stays above the scheduling noise of a busy Python host."""
    target_rtt_factor: float = 0.0
    """...and at least this many minimum RTTs, if larger (a long path tolerates proportionally more
    queue). 0 by default: a sender that starts while a queue stands takes it for the path's base
    delay, and a target scaled by that would let it tolerate twice the queue of earlier senders
    and starve them (LEDBAT's latecomer problem; measured: Jain's index 0.75 at 8 clients)."""
    slowdown_window: int = 2
    """Window held during a periodic slowdown (LEDBAT++'s 2 packets)."""
    slowdown_rtts: float = 2.0
    """A slowdown lasts this many RTTs: long enough for the bottleneck's queue to drain."""
    slowdown_gap: float = 9.0
    """The next slowdown starts this many slowdown-and-ramp durations after the last ended, so
    slowdowns cost about a tenth of the time (LEDBAT++'s factor 9)..."""
    slowdown_grid_s: float = 1.0
    """...or, on a wall-clock grid of this many seconds (0: none), on the multiples of the grid
    times the power of two nearest that cycle. A slowdown drains a shared queue only if every
    sender sharing it slows down at the same time; on a common clock (one host's, or NTP's to a
    millisecond) they do, and each measures the path's base RTT instead of the queue the others
    keep (a sender that started late otherwise took that queue for its base and out-sent the
    earlier ones: Jain's index 0.86-0.90 in 2 of 11 runs of 8 clients through a bottleneck)."""
    base_interval_s: float = 1.0
    """The base (minimum) RTT is kept per interval of this many seconds, or ``base_interval_rtts``
    smoothed RTTs if longer (RFC 6817 2.4.1 keeps one minimum per minute)..."""
    base_interval_rtts: float = 16.0
    base_history: int = 4
    """...for the current interval and this many before it: a base delay that rose for good (a
    route change, a proxy added) is accepted 4-5 intervals later instead of being read as queue
    forever; 5 intervals of at least 16 RTTs outlast two periodic slowdowns (about 36 RTTs
    apart). A slowdown drains the queue only if the other senders sharing it slow down too:
    with several unsynchronised senders a standing queue can outlive the history and creep into
    each one's base (LEDBAT's base drift, docs/congestion.md says how far)."""
    delay_filter: int = 4
    """The current RTT is the minimum of at least this many latest samples (RFC 6817's
    CURRENT_FILTER) and of every sample of the last half smoothed RTT (Copa's standing RTT): one
    late reply, or a burst of replies read late because this process was not scheduled, is not
    a queue."""
    standing_s: float = 0.05
    """...and of every sample of the last ``standing_s`` seconds, or half an SRTT if longer."""

    def __post_init__(self) -> None:
        if self.base_interval_s <= 0 or self.base_history < 1:
            raise ValueError("base_interval_s > 0 and base_history >= 1 are required")
        if not 1 <= self.min_window <= self.initial_window or self.max_window < self.min_window:
            raise ValueError("1 <= min_window <= initial_window and min_window <= max_window are required")
        if not 0 < self.beta < 1 or self.target_floor_s <= 0 or self.delay_filter < 1:
            raise ValueError("0 < beta < 1, target_floor_s > 0 and delay_filter >= 1 are required")
        if not (self.slowdown_grid_s == 0 or 0.001 <= self.slowdown_grid_s <= 3600):
            raise ValueError("slowdown_grid_s 0 or 0.001-3600 is required")


@dataclass
class CongestionController:
    """One sender's congestion window. Feed it every answer and every signal; read ``window``."""

    config: CongestionConfig = field(default_factory=CongestionConfig)
    clock_offset: float | Callable[[], float] = 0.0
    """The wall clock minus the clock of the ``now`` passed in, or a function that reads it
    (``lambda: time.time() - loop.time()``, read afresh whenever a slowdown is scheduled, so a
    stepped wall clock is followed): slowdowns are aligned to the wall clock (``slowdown_grid_s``)."""
    cwnd: float = 0.0
    ssthresh: float = float("inf")
    min_rtt: float | None = None
    """The path's base RTT: the minimum of the base history's interval minima (RFC 6817 2.4.1)."""
    recovery_start: float = float("-inf")
    """When the last reduction began: signals about earlier transmissions are the same episode."""
    next_slowdown_at: float | None = None
    """When to hold the window at ``slowdown_window`` next; None until the first reduction."""
    slowdown_until: float | None = None
    """Set while a slowdown lasts."""
    _slowdown_began: float = 0.0
    stats: Counter[str] = field(default_factory=Counter)
    """Signals (cc.signals.WHY), reductions (cc.reductions.WHY), slowdowns; a session shares its own."""
    srtt: float | None = None
    """The controller's own smoothed RTT (gain 1/8, RFC 6298), for the standing-RTT horizon."""
    _recent: deque[tuple[float, float]] = field(default_factory=deque, repr=False)
    """(when, RTT) of the latest samples, oldest first."""
    _minima: deque[tuple[int, float]] = field(default_factory=deque, repr=False)
    """(sample number, RTT) of the samples in ``_recent`` that no later sample undercuts, RTTs
    rising: the first is the standing RTT, in O(1) per sample instead of a scan of the 50 ms
    horizon (150 samples at 3,000 answers/s) on every answer."""
    _samples: int = 0
    _base: deque[tuple[float, float]] = field(default_factory=deque, repr=False)
    """(interval start, minimum RTT in it), oldest first; the last one is the current interval."""

    def __post_init__(self) -> None:
        self.cwnd = float(min(self.config.initial_window, self.config.max_window))

    @property
    def window(self) -> int:
        """Requests that may be in flight now (whole requests, at least min_window)."""
        return max(self.config.min_window, int(self.cwnd))

    def target(self) -> float:
        """Queueing delay (seconds above the minimum RTT) read as congestion."""
        return max(self.config.target_floor_s, self.config.target_rtt_factor * (self.min_rtt or 0.0))

    def queueing_delay(self) -> float:
        """The filtered current RTT minus the minimum RTT seen (RFC 6817 2.4.2); 0 before samples."""
        if not self._recent or self.min_rtt is None:
            return 0.0
        return self._rtt() - self.min_rtt

    def on_reply(
        self, now: float, sent_at: list[float], tx: int, busy: bool, marked: bool, in_flight: int
    ) -> str | None:
        """A valid reply echoing transmission ``tx`` (0: unnumbered) of a request whose
        transmissions went out at ``sent_at``; returns why the window shrank (MARK, BUSY, DELAY)
        or None. A mark or BUSY is a signal; a plain answer grows the window, or is a DELAY signal
        if its RTT shows a queue. An unnumbered reply to a retransmitted request gives no RTT
        (Karn) and counts only as a signal."""
        k = tx or (1 if len(sent_at) == 1 else 0)
        sent = sent_at[k - 1] if k else sent_at[-1]
        sample = now - sent if k else None
        if marked or busy:
            why = MARK if marked else BUSY
            return why if self.on_congestion(now, sent, why, sample) else None
        if sample is not None and self.on_answered(now, sent, sample, in_flight):
            return DELAY
        return None

    def on_answered(self, now: float, sent_at: float, rtt_s: float, in_flight: int) -> bool:
        """A plain answer (not BUSY, not marked) to a transmission sent at ``sent_at`` that took
        ``rtt_s``; ``in_flight``: requests still in flight after it. Grows the window, unless the
        delay says a queue is building (then it is a congestion signal). True if the window shrank."""
        self._sample(now, rtt_s)
        if self._slowing_down(now):
            return False
        if self.queueing_delay() > self.target():
            return self.on_congestion(now, sent_at, DELAY)
        if in_flight + 1 < self.window:
            return False  # not using the window: an unused window proves nothing (RFC 7661)
        self.cwnd += 1.0 if self.cwnd < self.ssthresh else 1.0 / self.cwnd
        if self.cwnd >= self.config.max_window:  # slow start ended at the cap, not on a signal
            self.cwnd = float(self.config.max_window)
            self._first_slowdown(now)
        return False

    def on_congestion(self, now: float, sent_at: float, why: str, rtt_s: float | None = None) -> bool:
        """A congestion signal (MARK, BUSY or DELAY) about a transmission sent at ``sent_at``.
        True if the window was reduced (at most once per round trip)."""
        if rtt_s is not None:
            self._sample(now, rtt_s)
        self.stats[f"cc.signals.{why}"] += 1
        if sent_at <= self.recovery_start or self._slowing_down(now):
            return False  # same episode (or a slowdown, which already holds the window minimal)
        self._first_slowdown(now)
        self.recovery_start = now
        self.ssthresh = max(float(self.config.min_window), self.cwnd * self.config.beta)
        self.cwnd = self.ssthresh
        self.stats[f"cc.reductions.{why}"] += 1
        return True

    def _rtt(self) -> float:
        """The current (standing) RTT; 0 before any sample."""
        return self._minima[0][1] if self._recent else 0.0

    def _slowing_down(self, now: float) -> bool:
        """Periodic slowdowns (LEDBAT++, draft-irtf-iccrg-ledbat-plus-plus section 4.4): every so
        often, hold the window at 2 for two RTTs, so the queue drains and every sender sharing it
        measures the true minimum RTT. Without them a sender that starts while a queue stands takes
        that queue for the path's base delay and tolerates it, starving the earlier ones."""
        if self.slowdown_until is not None:
            if now < self.slowdown_until:
                return True
            duration = self.slowdown_until - self._slowdown_began  # as scheduled: a pause in replies is no RTT
            self.slowdown_until = None
            self.recovery_start = now  # answers to what was sent during the slowdown are not news
            self.next_slowdown_at = self._after_slowdown(now, duration)
            return False
        if self.next_slowdown_at is None or now < self.next_slowdown_at:
            return False
        self.ssthresh = max(self.cwnd, float(self.config.min_window))  # ramp back up in slow start
        self.cwnd = float(max(self.config.min_window, min(self.config.slowdown_window, self.config.max_window)))
        self._slowdown_began = now
        self.slowdown_until = now + self.config.slowdown_rtts * max(self._rtt(), 0.001)
        self.stats["cc.slowdowns"] += 1
        return True

    def _first_slowdown(self, now: float) -> None:
        """Slow start has ended (a first signal, or the window reached its maximum): the first
        slowdown comes two RTTs later, on the grid (LEDBAT++'s initial slowdown). Also at the cap:
        a sender that joined a standing queue takes it for base delay, and with a maximum window
        that adds less than the target on top it never sees a signal, so without this it would
        never slow down."""
        if self.next_slowdown_at is None:
            when = now + self.config.slowdown_rtts * self._rtt()
            self.next_slowdown_at = self._on_grid(when, self.config.slowdown_grid_s)

    def _after_slowdown(self, now: float, duration: float) -> float:
        """When the next slowdown is due, a slowdown of ``duration`` having just ended: after 9x
        the slowdown and its ramp (LEDBAT++), or, on the wall-clock grid, on the next multiple of
        a period of about that length: the grid times the nearest power of two. A sender then
        slows down on every multiple of its period, and senders with the same period (the same
        RTT, on a shared queue) on the same instants; different periods still meet on every
        multiple of the longer. (Rounded up to the grid alone, senders whose cycle is 1.5 s would
        split for good between odd and even seconds.)"""
        wait = self.config.slowdown_gap * 2 * duration
        grid = self.config.slowdown_grid_s
        if grid <= 0:
            return now + wait
        cycle = duration + wait
        period = grid * 2.0 ** round(math.log2(cycle / grid)) if cycle > grid else grid
        return self._on_grid(now, period)

    def _on_grid(self, when: float, period: float) -> float:
        """The first instant at or after ``when`` that is a whole multiple of ``period`` seconds on
        the wall clock, in the clock of ``now``; ``when`` itself without a grid."""
        offset = self.clock_offset() if callable(self.clock_offset) else self.clock_offset
        if self.config.slowdown_grid_s <= 0 or not math.isfinite(offset):
            return when
        return math.ceil((when + offset) / period) * period - offset

    def _sample(self, now: float, rtt_s: float) -> None:
        rtt_s = max(rtt_s, 0.0)
        self._update_base(now, rtt_s)
        self.srtt = rtt_s if self.srtt is None else self.srtt + (rtt_s - self.srtt) / 8
        recent, minima = self._recent, self._minima
        recent.append((now, rtt_s))
        self._samples += 1
        while minima and minima[-1][1] >= rtt_s:
            minima.pop()
        minima.append((self._samples, rtt_s))
        horizon = now - max(self.config.standing_s, self.srtt / 2)
        while len(recent) > self.config.delay_filter and recent[0][0] < horizon:
            recent.popleft()
        oldest = self._samples - len(recent) + 1
        while minima[0][0] < oldest:
            minima.popleft()

    def _update_base(self, now: float, rtt_s: float) -> None:
        """RFC 6817 2.4.1's base-delay history with short intervals: a minimum per interval, the
        oldest forgotten as a new one starts, so the base delay can rise as well as fall."""
        base, cfg = self._base, self.config
        interval = max(cfg.base_interval_s, cfg.base_interval_rtts * (self.srtt or 0.0))
        if base and now < base[-1][0] + interval:
            base[-1] = (base[-1][0], min(base[-1][1], rtt_s))
        else:
            base.append((now, rtt_s))
            while len(base) > cfg.base_history + 1:
                base.popleft()
        self.min_rtt = min(m for _, m in base)
