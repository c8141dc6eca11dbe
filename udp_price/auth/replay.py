"""The replay window: a request signed at ``t`` is taken once, and only while |now - t| <= 300 s.

RFC 8945 section 5.2.3 bounds a TSIG message's age by the fudge; within it a copy would still
verify, so the server remembers (key id, request id, timestamp) of what it accepted, as a DNS
cookie server or an OSCORE replay window (RFC 8613 section 7.4) remembers what it has seen.

Only requests with a valid tag are remembered, so only a key holder can add entries; even so the
set is bounded. When it is full the oldest entry is forgotten and its key's floor rises to that
entry's timestamp: a request at or below the floor is refused ("replay_floor"). That keeps the
guarantee exact - an entry is forgotten only once nothing at or below its timestamp can get in -
at the price of refusing, under a flood, a client whose clock lags the flood's (it retransmits
with a fresh timestamp).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from wire_format import AUTH_WINDOW_S

DEFAULT_CAPACITY = 200_000
"""Entries remembered (about 150 bytes each: 30 MB): 660 requests per second for all 300 s of
the window before the floor starts to rise."""


@dataclass
class ReplayWindow:
    """Decides whether an authenticated request is fresh. ``now_ms`` is Unix time in milliseconds."""

    window_ms: int = AUTH_WINDOW_S * 1000
    capacity: int = DEFAULT_CAPACITY
    _seen: OrderedDict[tuple[int, int, int], None] = field(default_factory=OrderedDict, repr=False)
    _floor: dict[int, int] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, key_id: int, request_id: int, timestamp_ms: int, now_ms: int) -> str | None:
        """None (and the request is remembered) if it is fresh, else why not: "too_old",
        "too_new" (outside the window), "replay" (seen), "replay_floor" (older than what a full set forgot)."""
        if timestamp_ms < now_ms - self.window_ms:
            return "too_old"
        if timestamp_ms > now_ms + self.window_ms:
            return "too_new"
        if timestamp_ms <= self._floor.get(key_id, -1):
            return "replay_floor"
        entry = (key_id, request_id, timestamp_ms)
        if entry in self._seen:
            return "replay"
        self._expire(now_ms)
        self._seen[entry] = None
        return None

    def _expire(self, now_ms: int) -> None:
        """Forget entries the window refuses anyway, then the oldest while over capacity."""
        seen = self._seen
        oldest_allowed = now_ms - self.window_ms
        while seen:
            entry = next(iter(seen))
            if entry[2] >= oldest_allowed and len(seen) < self.capacity:
                return
            seen.popitem(last=False)
            if entry[2] >= oldest_allowed:  # forgotten while it could still be replayed: raise the floor
                self._floor[entry[0]] = max(self._floor.get(entry[0], -1), entry[2])
