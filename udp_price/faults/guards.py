"""The fault proxy's guards, pure and clock-free (``now`` passed in): no loops, bounded memory and fds.

- ``normalise``: an IPv4 client seen by a dual-stack (``--listen [::]``) socket is ``::ffff:a.b.c.d``;
  compared with numeric IPv4 addresses it must be ``a.b.c.d``.
- ``LoopGuard``: remembers a digest of every payload relayed, either way, for ``window_s``. A
  payload arriving from a client within the window is our own datagram come back, and dropped and
  counted, if it is one we sent *down* to a client (a reflector such as an echo service sending our
  reply back as a request) or one we relayed *up* for another client address (two proxies pointed
  at each other, or any path that leads back to us). A client retransmitting its own request from
  its own address is not affected.
- ``HeldBudget``: datagrams held for a delay (``--delay``, ``--jitter``, ``--reorder``) are bounded
  in count and bytes; beyond it they are dropped and counted.
- ``flow_limit``: flows (one upstream socket each) stay below the process's file descriptor limit.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field

from udp_price.address import Address

LOOP_WINDOW_S = 2.0
"""How long a payload relayed upstream is remembered: longer than any path back to us takes, far
shorter than a client's gap between two different requests with identical bytes (udp-price requests
carry random 64-bit ids, so two clients never send identical bytes)."""
LOOP_MAX_DIGESTS = 65_536
"""Digests kept at most (16 bytes each plus the entry): a flood of distinct payloads costs bounded memory."""
MAX_HELD = 10_000
"""Datagrams held for a delay at once, both directions together."""
MAX_HELD_BYTES = 32 * 1024 * 1024
"""Payload bytes held for a delay at once (32 MiB)."""
FD_RESERVE = 64
"""File descriptors left for everything but flows: stdio, the listening socket, the event loop, a log."""
FLOW_IDLE_S = 120.0
"""A flow with no datagram either way for this long is closed (its socket and fd freed)."""


def normalise(addr: Address) -> Address:
    """``('::ffff:127.0.0.1', p)`` -> ``('127.0.0.1', p)``; any other address unchanged."""
    host, port = addr
    if host.startswith("::ffff:") or host.startswith("::FFFF:"):
        try:
            mapped = ipaddress.IPv6Address(host.split("%", 1)[0]).ipv4_mapped
        except ValueError:
            return addr
        if mapped is not None:
            return str(mapped), port
    return addr


def flow_limit(wanted: int, fd_soft_limit: int) -> int:
    """Flows allowed: ``wanted``, but never so many that their sockets exhaust the fd limit."""
    if fd_soft_limit < 0:  # RLIM_INFINITY
        return wanted
    return max(1, min(wanted, fd_soft_limit - FD_RESERVE))


@dataclass
class LoopGuard:
    window_s: float = LOOP_WINDOW_S
    max_digests: int = LOOP_MAX_DIGESTS
    _seen: OrderedDict[bytes, tuple[Address | None, float]] = field(default_factory=OrderedDict, repr=False)
    """digest -> (client it was relayed up for, or None if it was sent down; when)."""
    _key: bytes = field(default_factory=lambda: secrets.token_bytes(16), repr=False)

    def is_loop(self, payload: bytes, client: Address, now: float) -> bool:
        """True if ``payload`` from ``client`` is one we sent down within the window, or relayed
        up for another client. Otherwise remembers it as relayed up for ``client``; False."""
        digest = self._digest(payload)
        earlier = self._seen.get(digest) if self._fresh(now) else None
        if earlier is not None and earlier[0] != client:
            return True
        self._remember(digest, client, now)
        return False

    def sent_down(self, payload: bytes, now: float) -> None:
        """Remember a payload sent to a client: coming back as a request, it is a reflection."""
        self._fresh(now)
        self._remember(self._digest(payload), None, now)

    def _digest(self, payload: bytes) -> bytes:
        return hashlib.blake2b(payload, digest_size=16, key=self._key).digest()

    def _remember(self, digest: bytes, client: Address | None, now: float) -> None:
        self._seen.pop(digest, None)
        self._seen[digest] = (client, now)  # last: the dict stays in time order
        if len(self._seen) > self.max_digests:
            self._seen.popitem(last=False)

    def _fresh(self, now: float) -> bool:
        self._expire(now)
        return True

    def _expire(self, now: float) -> None:
        while self._seen:
            digest, (_, when) = next(iter(self._seen.items()))
            if now - when <= self.window_s:
                return
            del self._seen[digest]

    def __len__(self) -> int:
        return len(self._seen)


@dataclass
class HeldBudget:
    max_count: int = MAX_HELD
    max_bytes: int = MAX_HELD_BYTES
    count: int = 0
    bytes: int = 0

    def take(self, size: int) -> bool:
        """Reserve room for one held datagram of ``size`` bytes; False if there is none."""
        if self.count + 1 > self.max_count or self.bytes + size > self.max_bytes:
            return False
        self.count += 1
        self.bytes += size
        return True

    def give_back(self, size: int) -> None:
        self.count -= 1
        self.bytes -= size
