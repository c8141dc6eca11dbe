"""The replay window: a signed request is taken once, only while |now - t| <= 300 s, and only if it
was signed after this server started.

RFC 8945 section 5.2.3 bounds a TSIG message's age by the fudge; within it a copy would still
verify, so the server remembers what it accepted, as a DNS cookie server or an OSCORE replay
window (RFC 8613 section 7.4) remembers what it has seen. A copy is byte for byte the datagram it
copies (any other byte breaks the tag), so what is remembered is the tag's fingerprint (its first
56 bits), filed under the key id and the second of the signed timestamp. Timestamps follow the
wall clock and need not be unique or increasing: two requests of one second differ in their
request id or transmission number, hence in their tags.

The set lives in memory, so a restarted server has forgotten it: ``not_before_ms`` (the server's
start) refuses every request signed before it ("before_start"), so nothing captured before a
restart is taken after it. A client's retransmissions are signed afresh, so it recovers by retrying.

Only requests with a valid tag are remembered, so only a key holder can add entries; even so the
set is bounded. When it is full the oldest second is forgotten and its key's floor rises to the
end of that second: a request at or below the floor is refused ("replay_floor"). An entry is
thus forgotten only once nothing signed at or before it can get in; the price is refusing, under
a flood, a client whose clock lags the flood's (it retransmits with a fresh timestamp).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from wire_format import AUTH_WINDOW_S

DEFAULT_CAPACITY = 200_000
"""Entries remembered (about 73 bytes each: 15 MB, measured by tests/test_auth_replay.py): 660
requests per second for all 300 s of the window before the floor starts to rise."""
BUCKET_MS = 1000
_LOW32 = 0xFFFFFFFF


@dataclass
class ReplayWindow:
    """Decides whether an authenticated request is fresh. ``now_ms`` is Unix time in milliseconds."""

    window_ms: int = AUTH_WINDOW_S * 1000
    capacity: int = DEFAULT_CAPACITY
    not_before_ms: int = 0
    """Unix ms of the server's start: anything signed earlier may have been answered by the
    process before this one, whose memory is gone."""
    _buckets: dict[int, set[int]] = field(default_factory=dict, repr=False)
    """(key_id << 32 | second) -> fingerprints: small ints in sets, no tuple per entry."""
    _order: list[int] = field(default_factory=list, repr=False)
    """A heap of (second << 32 | key_id), one per bucket: the oldest bucket first."""
    _floor: dict[int, int] = field(default_factory=dict, repr=False)
    _size: int = 0

    def __len__(self) -> int:
        return self._size

    def check(self, key_id: int, fingerprint: int, timestamp_ms: int, now_ms: int) -> str | None:
        """None (and the request is remembered) if it is fresh, else why not: "too_old", "too_new"
        (outside the window), "before_start" (signed before this server started), "replay" (seen),
        "replay_floor" (at or before what a full set forgot)."""
        if timestamp_ms < now_ms - self.window_ms:
            return "too_old"
        if timestamp_ms > now_ms + self.window_ms:
            return "too_new"
        if timestamp_ms < self.not_before_ms:
            return "before_start"
        if self._floor and timestamp_ms <= self._floor.get(key_id, -1):
            return "replay_floor"
        second = timestamp_ms // BUCKET_MS
        slot = key_id << 32 | second
        bucket = self._buckets.get(slot)
        if bucket is None:
            self._expire(now_ms)
            self._buckets[slot] = {fingerprint}
            heapq.heappush(self._order, second << 32 | key_id)
        elif fingerprint in bucket:
            return "replay"
        else:
            bucket.add(fingerprint)
        self._size += 1
        if self._size > self.capacity:
            self._forget_oldest()
        return None

    def _expire(self, now_ms: int) -> None:
        """Forget the seconds the window refuses anyway (run when a new second's bucket opens)."""
        order = self._order
        oldest_second = (now_ms - self.window_ms) // BUCKET_MS
        while order and order[0] >> 32 < oldest_second:
            self._drop(heapq.heappop(order))
        if self._floor:
            limit = now_ms - self.window_ms
            self._floor = {k: v for k, v in self._floor.items() if v >= limit}

    def _forget_oldest(self) -> None:
        """Full: forget the oldest second, and refuse from now on whatever it could have caught."""
        entry = heapq.heappop(self._order)
        key_id, second = entry & _LOW32, entry >> 32
        self._drop(entry)
        last_ms = (second + 1) * BUCKET_MS - 1
        self._floor[key_id] = max(self._floor.get(key_id, -1), last_ms)

    def _drop(self, entry: int) -> None:
        bucket = self._buckets.pop((entry & _LOW32) << 32 | entry >> 32)
        self._size -= len(bucket)
