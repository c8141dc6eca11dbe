"""Server-side guards, pure and clock-free: per-source rate limiting and the reply cache.

Both take ``now`` (seconds, monotonic) as an argument and hold bounded state, so a
flood of new source addresses or request ids costs a fixed amount of memory.
"""

from __future__ import annotations

import enum
import hashlib
import math
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field

ENTRY_OVERHEAD = 480
"""Bytes a reply cache entry costs besides the reply itself (key, digest, entry, dict slot), measured
with tracemalloc on CPython 3.11."""
NEWCOMER_BURSTS = 16
"""Full bursts the shared pool for new sources holds: 16 clients may start at once at full speed."""
MAX_HINT_S = 65.0
"""Longest retry-after a BUSY reply can carry (its u16 field counts milliseconds)."""


class Verdict(enum.Enum):
    ALLOW = "allow"
    SLIP = "slip"  # over the limit: answer BUSY with a retry-after hint
    DROP = "drop"  # over the limit: stay silent


@dataclass
class _Bucket:
    tokens: float
    updated: float
    over: int = 0
    queue: float = 0.0
    """Over-limit requests told to come back, draining at ``rate``: the n-th is told n / rate."""


@dataclass
class RateLimiter:
    """Per-source token bucket, as DNS response rate limiting (RRL) does.

    A source may send ``rate`` requests per second with bursts of ``burst``. Over the
    limit, every ``slip``-th request gets a small BUSY reply (so a real client learns to
    back off) and the rest get silence (so a spoofed victim gets almost nothing).
    """

    rate: float = 40_000.0
    """About half of what one udp-price process answers per second on a small machine: one source
    cannot take it all, while a bulk client sending single quotes (~10,000/s) is never slowed."""
    burst: float = 80_000.0
    slip: int = 2
    max_sources: int = 65_536
    """Buckets kept; the least recently seen source is forgotten first (it then starts full)."""
    near_fraction: float = 0.1
    """A source whose bucket holds less than this share of ``burst`` is near its limit: its
    replies carry the OVERLOADED mark, so a client with congestion control slows down before
    the bucket runs dry and requests go unanswered."""
    near_limit: bool = field(default=False, repr=False)
    """Whether the source of the latest ``check`` is near its limit (read by the core right after
    the check, to mark the reply it then builds)."""
    _buckets: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict, repr=False)
    _newcomers: _Bucket | None = field(default=None, repr=False)
    """One shared pool (``rate`` per second, up to NEWCOMER_BURSTS x ``burst``) from which every
    source not in the table draws its starting tokens. A sender rotating through more sources than
    the table holds is always 'new': if each new source started with a full bucket for free,
    rotation would bypass the limit entirely."""

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1 or self.slip < 0 or self.max_sources < 1:
            raise ValueError("rate > 0, burst >= 1, slip >= 0 and max_sources >= 1 are required")
        self._near = self.burst * self.near_fraction  # per datagram: one comparison

    def check(self, source: str, now: float) -> Verdict:
        bucket = self._buckets.get(source)
        if bucket is None:
            start = self._draw_newcomer_tokens(now)
            if start < 1.0:
                return Verdict.DROP  # a flood of new sources: silence, and nobody evicted for it
            bucket = _Bucket(start, now)
            self._buckets[source] = bucket
            if len(self._buckets) > self.max_sources:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(source)
            refill = (now - bucket.updated) * self.rate
            bucket.tokens = min(self.burst, bucket.tokens + refill)
            bucket.queue = max(0.0, bucket.queue - refill)
            bucket.updated = now
        self.near_limit = bucket.tokens < self._near
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return Verdict.ALLOW
        bucket.over += 1
        if self.slip and bucket.over % self.slip == 0:
            bucket.queue = min(self.rate * MAX_HINT_S, bucket.queue + 1.0)
            return Verdict.SLIP
        return Verdict.DROP

    def knows(self, source: str) -> bool:
        """True if ``source`` has a bucket (it is not a newcomer)."""
        return source in self._buckets

    def _draw_newcomer_tokens(self, now: float) -> float:
        """A new source's starting tokens, paid from the shared pool (so what all new sources get
        together is bounded by the pool, whatever their number); 0 when the pool is dry."""
        cap = self.burst * NEWCOMER_BURSTS
        pool = self._newcomers
        if pool is None:
            pool = self._newcomers = _Bucket(cap, now)
        pool.tokens = min(cap, pool.tokens + (now - pool.updated) * self.rate)
        pool.updated = now
        if pool.tokens < 1.0:
            pool.over += 1
            return 0.0
        start = min(self.burst, pool.tokens)
        pool.tokens -= start
        return start

    @property
    def newcomers_refused(self) -> int:
        """First requests from unknown sources dropped because new sources arrived too fast."""
        return self._newcomers.over if self._newcomers is not None else 0

    def retry_after_ms(self, source: str) -> int:
        """Milliseconds a BUSY reply tells ``source`` to wait (at least 1).

        Not just until the next token: with many requests over the limit that would bring them all
        back at once. Each one told to come back takes a place in a virtual queue that drains at
        ``rate``, so the n-th is told about n / rate and their retries arrive spread out.
        """
        bucket = self._buckets.get(source)
        if bucket is None:
            return 1
        wait = max(0.0, 1.0 - bucket.tokens) + max(0.0, bucket.queue - 1.0)
        return max(1, math.ceil(wait / self.rate * 1000))

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass
class _Entry:
    request_digest: bytes
    reply: bytes
    stored: float


@dataclass
class ReplyCache:
    """(source address, request id) -> the reply it got, as CoAP servers keep for duplicates.

    A retransmission gets byte-for-byte the reply the first transmission got, even if the
    catalog was reloaded in between. An entry is used only for a byte-identical request: the
    entry keeps a keyed BLAKE2b digest of every byte of the request that earned the reply. A CRC
    would not do: anyone can choose 4 free bytes of a small request so that its CRC32 equals a
    big request's, and be sent the big request's reply (an amplifier). The key is random per
    process, so no one can even search for a collision offline.

    The OVERLOADED mark (0x40) is part of the stored bytes: a replay is exactly the reply first
    sent, marked if the server was overloaded when it built it, unmarked otherwise, whatever the
    server's state at the replay. Re-marking a replay would need a copy and a new CRC32 (the
    work the mark must not add while overloaded) and would break the byte-for-byte promise; a
    replay answers a retransmission, and the fresh replies around it carry the current state.
    """

    max_entries: int = 100_000
    max_age_s: float = 60.0
    max_bytes: int = 32 * 1024 * 1024
    """Memory bound besides the count: an entry is charged ENTRY_OVERHEAD plus its reply's size
    (measured: ~550 bytes for a quote, ~1,100 for a list page), so at most about 60,000 quote
    replies or 30,000 list pages are kept per process, whatever max_entries says."""
    evictions: int = 0
    _bytes: int = 0
    _puts: int = 0
    _entries: OrderedDict[tuple[str, int, int], _Entry] = field(default_factory=OrderedDict, repr=False)
    _key: bytes = field(default_factory=lambda: secrets.token_bytes(16), repr=False)

    def digest(self, request: bytes) -> bytes:
        """What an entry remembers of the request: 128 bits of keyed BLAKE2b over all of it."""
        return hashlib.blake2b(request, digest_size=16, key=self._key).digest()

    def get(self, key: tuple[str, int, int], request: bytes, now: float) -> bytes | None:
        """The reply stored for exactly these request bytes from this source, or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now - entry.stored > self.max_age_s or entry.request_digest != self.digest(request):
            self._drop(key)
            return None
        return entry.reply

    def put(self, key: tuple[str, int, int], request: bytes, reply: bytes, now: float) -> None:
        entries = self._entries
        if key in entries:
            entries.move_to_end(key)  # assignment alone would leave it at its old place in the age order
            self._bytes -= ENTRY_OVERHEAD + len(entries[key].reply)
        entries[key] = _Entry(self.digest(request), reply, now)
        self._bytes += ENTRY_OVERHEAD + len(reply)
        self._puts += 1
        while len(entries) > self.max_entries or (self._bytes > self.max_bytes and len(entries) > 1):
            self._drop(next(iter(entries)))
        # Sweeping by age on every put cost more than the lookup itself. get() never serves an
        # old entry anyway, so old ones only need to leave memory eventually: every 64th put.
        if self._puts % 64 == 0:
            self._expire(now)

    def _expire(self, now: float) -> None:
        # Entries are in insertion order, so the oldest are first: stop at the first young one.
        while self._entries:
            key, oldest = next(iter(self._entries.items()))
            if len(self._entries) <= self.max_entries and now - oldest.stored <= self.max_age_s:
                return
            self._drop(key)

    def _drop(self, key: tuple[str, int, int]) -> None:
        self._bytes -= ENTRY_OVERHEAD + len(self._entries.pop(key).reply)
        self.evictions += 1

    @property
    def bytes(self) -> int:
        """What the entries are charged, in bytes (see max_bytes)."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)
