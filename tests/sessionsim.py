"""A scripted network for the pure client session: no sockets, no clock, exact times.

Datagrams the session sends travel up to the real server core (``QuoteServer.handle_datagram``)
and its replies travel down; ``fate(direction, index, now)`` decides each one's delays: an empty
list drops it, two entries duplicate it, a long delay reorders it. While the server is ``down``
a datagram that reaches it comes back as an ICMP port-unreachable error, as the kernel does.

For short scripted exchanges, ``roundtrip`` and ``drop`` (after aioquic's test helpers of the same
names) move or lose whatever the session has queued, at one instant, with no network model at all.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from udp_price.catalog import Catalog
from udp_price.client.events import Answered, Event, Failed
from udp_price.client.retry import RetryPolicy
from udp_price.client.session import ClientSession
from udp_price.server.core import QuoteServer
from udp_price.wire import Request

Fate = Callable[[str, int, float], list[float]]
ADDR = ("127.0.0.1", 40000)


def steady(up_s: float = 0.001, down_s: float = 0.001) -> Fate:
    return lambda direction, index, now: [up_s if direction == "up" else down_s]


@dataclass
class Sim:
    session: ClientSession
    server: QuoteServer
    fate: Fate = field(default_factory=steady)
    down: list[tuple[float, float]] = field(default_factory=list)
    """Intervals (start, end) during which nothing listens on the server's port."""
    tamper: Callable[[bytes, int], bytes | None] | None = None
    """Rewrite (or drop, with None) the server's reply number n before it travels down."""
    now: float = 0.0
    events: dict[int, Event] = field(default_factory=dict)
    sent_at: list[float] = field(default_factory=list)
    _queue: list[tuple[float, int, str, bytes]] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _index: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})

    def send(self, request: Request) -> None:
        self._absorb(self.session.send(request, self.now))

    def run(self, until: float, max_steps: int = 200_000) -> None:
        """Advance time to ``until``, delivering everything due on the way."""
        for _ in range(max_steps):
            timer = self.session.timer()
            next_packet = self._queue[0][0] if self._queue else None
            candidates = [t for t in (timer, next_packet) if t is not None]
            if not candidates or min(candidates) > until:
                self.now = max(self.now, until)
                return
            self.now = max(self.now, min(candidates))
            if next_packet is not None and next_packet <= self.now:
                _, _, kind, data = heapq.heappop(self._queue)
                self._deliver(kind, data)
            else:
                self._absorb(self.session.handle_timer(self.now))
        raise AssertionError("simulation did not settle")

    def _absorb(self, events: list[Event]) -> None:
        for event in events:
            assert event.request_id not in self.events, "one outcome per request"
            self.events[event.request_id] = event
        for data in self.session.datagrams_to_send():
            self.sent_at.append(self.now)
            self._travel("up", data)

    def _travel(self, direction: str, data: bytes) -> None:
        index = self._index[direction]
        self._index[direction] += 1
        for delay in self.fate(direction, index, self.now):
            kind = "to_server" if direction == "up" else "to_client"
            heapq.heappush(self._queue, (self.now + delay, next(self._seq), kind, data))

    def _deliver(self, kind: str, data: bytes) -> None:
        if kind == "to_client":
            self._absorb(self.session.datagram_received(data, self.now))
        elif kind == "icmp":
            self._absorb(self.session.error_received(self.now))
        elif any(start <= self.now < end for start, end in self.down):
            heapq.heappush(self._queue, (self.now + 0.001, next(self._seq), "icmp", b""))
        else:
            reply = self.server.handle_datagram(data, ADDR, self.now)
            if reply is not None and self.tamper is not None:
                reply = self.tamper(reply, self._index["down"])
            if reply is not None:
                self._travel("down", reply)

    def answered(self) -> list[Answered]:
        return [e for e in self.events.values() if isinstance(e, Answered)]

    def failed(self) -> list[Failed]:
        return [e for e in self.events.values() if isinstance(e, Failed)]


def pair(prices: dict[str, int], policy: RetryPolicy | None = None) -> tuple[ClientSession, QuoteServer]:
    """An in-memory client session and server core, connected by nothing but ``roundtrip``."""
    return ClientSession(policy or RetryPolicy()), QuoteServer(Catalog.from_prices(prices))


def roundtrip(session: ClientSession, server: QuoteServer, now: float) -> tuple[int, int, list[Event]]:
    """Deliver every datagram the session has queued to the server and every reply straight back,
    at ``now``. Returns (datagrams sent up, replies delivered down, the session's events)."""
    up = down = 0
    events: list[Event] = []
    for data in session.datagrams_to_send():
        up += 1
        reply = server.handle_datagram(data, ADDR, now)
        if reply is not None:
            down += 1
            events += session.datagram_received(reply, now)
    return up, down, events


def drop(session: ClientSession) -> int:
    """Lose every datagram the session has queued (they never reach the server); how many."""
    return len(session.datagrams_to_send())
