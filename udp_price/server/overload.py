"""When the server marks its replies OVERLOADED (bit 0x40 of the kind byte): pure, time passed in.

The mark is the server's explicit congestion signal, as ECN-CE is for TCP and QUIC (RFC 3168,
RFC 9002 section 7): clients running congestion control shrink their window on it, before the
socket queue overflows and retransmissions pile onto the overflow. The serving loop asks once
per wake-up (never per datagram) and feeds in what it sees:

- the kernel's count of datagrams this socket dropped for lack of buffer space (``SO_RXQ_OVFL``,
  Linux): any growth means requests were already lost; the mark is then held ``hold_s``;
- a deep backlog: the first datagram of a wake-up, the oldest in the socket's queue, had waited
  ``deep_wait_s`` (100 ms) or more (its kernel timestamp, SO_TIMESTAMPNS), as CoDel (RFC 8289)
  judges a queue by the time its packets spend in it. The replies of that wake-up are marked,
  from the first on: they answer the requests that waited, and a queue gone by the next wake-up
  marks nothing more. A server that is merely busy, never finding its socket empty while
  clients keep a short standing queue (what delay-based congestion control aims for: the server
  never idles), is not marked; 100 ms is four times the clients' 25 ms delay target
  (docs/congestion.md). Only on a socket without timestamps
  (not Linux) does a wake-up that handled ``deep_backlog`` datagrams without emptying the socket
  count instead, and mark the next one.

The third signal, a source close to its rate limit, is per source and comes from the rate
limiter itself (``RateLimiter.near_limit``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

DEEP_BACKLOG = 256
"""Datagrams handled in one wake-up that mean a standing queue (the loop's DRAIN_LIMIT: it found
the socket still non-empty after a full burst)."""
READ_DROPS_BURST = 16
"""Read the drop counter when the previous wake-up handled at least this many datagrams (a queue
is building; a socket with a 4 MB buffer overflows only after thousands)..."""
READ_DROPS_EVERY = 64
"""...and at every 64th wake-up anyway. recvmsg costs about a microsecond more than recvfrom, and
on a lightly loaded server every wake-up handles a single datagram."""
DEEP_WAIT_S = 0.1
"""Time the oldest queued datagram has waited that means a standing queue: CoDel's interval
(RFC 8289), LEDBAT's most tolerated delay (RFC 6817 2.5: TARGET <= 100 ms)."""
CLOCK_STEP_S = 10.0
"""Before the loop has once found its socket empty, a longer wait is taken for a wall-clock step
between the kernel's timestamp and ours, not a queue. Afterwards the monotonic clock bounds it:
every datagram now queued arrived after the socket was last found empty."""
STAMP_SLACK_S = 0.05
"""What a wait may exceed that bound by: the kernel stamps a datagram before the loop reads its
clock, and the two clocks are read at different moments."""
HOLD_S = 0.1
"""How long kernel drops keep the mark on: drops come in bursts, and clients need a round trip
or two of marked replies to react."""


@dataclass
class OverloadDetector:
    deep_backlog: int = DEEP_BACKLOG
    deep_wait_s: float = DEEP_WAIT_S
    hold_s: float = HOLD_S
    timestamps: bool = False
    """The socket reports when each datagram was queued: the deep backlog is then judged by that
    wait alone (``queue_waited``), never by the count of a burst read without one."""
    stats: Counter[str] = field(default_factory=Counter)
    kernel_drops: int = 0
    """The socket's drop counter as last read (SO_RXQ_OVFL is cumulative per socket)."""
    _until: float = float("-inf")
    _deep: bool = False
    _last_burst: int = 0
    _wakeups: int = 0
    _emptied_at: float | None = None
    """When (the loop's monotonic clock) a wake-up last began that went on to empty the socket."""

    def next_burst(self, now: float) -> tuple[bool, bool]:
        """For the next wake-up: (mark its replies?, read its first datagram with recvmsg, for the
        drop counter and the time it was queued?). Read after a wake-up of READ_DROPS_BURST or
        more, on every READ_DROPS_EVERY-th, and after a pause of ``deep_wait_s`` since the socket
        was last emptied (a loop that stalled at light load: its queue may be old)."""
        self._wakeups += 1
        wants = self._last_burst >= READ_DROPS_BURST or self._wakeups % READ_DROPS_EVERY == 0
        if self._emptied_at is not None and now - self._emptied_at >= self.deep_wait_s:
            wants = True
        return self.overloaded(now), wants

    def queue_waited(self, waited: float | None, now: float | None = None) -> bool:
        """The first datagram of this wake-up had been queued ``waited`` seconds (None: unknown)
        by the wall clock, read at ``now`` by the loop's monotonic one: True if the replies of
        this wake-up are to be marked (a deep backlog). A wait below zero, or longer than the
        socket can have held anything (since it was last found empty; before that, CLOCK_STEP_S),
        is a step of the wall clock, not a queue."""
        if now is not None and self._emptied_at is not None:
            bound = now - self._emptied_at + STAMP_SLACK_S
        else:
            bound = CLOCK_STEP_S
        deep = waited is not None and self.deep_wait_s <= waited < bound
        if deep:
            self.stats["overload.deep_backlog"] += 1
        return deep

    def after_burst(self, handled: int, kernel_drops: int | None, now: float) -> None:
        """One wake-up of the loop handled ``handled`` datagrams; ``kernel_drops`` is the socket's
        SO_RXQ_OVFL counter read during it (None: not read or not available)."""
        if kernel_drops is not None and kernel_drops != self.kernel_drops:
            if kernel_drops > self.kernel_drops:
                self.stats["overload.kernel_drops"] += kernel_drops - self.kernel_drops
                self._until = now + self.hold_s
            self.kernel_drops = kernel_drops  # (a smaller value: the 32-bit counter wrapped)
        self._last_burst = handled
        if handled < self.deep_backlog:  # the burst ended on an empty socket (DRAIN_LIMIT not reached)
            self._emptied_at = now
        self._deep = not self.timestamps and handled >= self.deep_backlog
        if self._deep:
            self.stats["overload.deep_backlog"] += 1

    def overloaded(self, now: float) -> bool:
        """Mark the replies of the next burst (before its first datagram says how long it waited)?"""
        return self._deep or now < self._until
