"""udp-price client API: quotes over UDP that survive loss, duplication, reordering and forgery.

The recovery logic is the sans-I/O session in ``udp_price.client.session`` (pure, clock passed
in); this module is the asyncio socket shell around it and a small Python API:

    async with QuoteClient(("127.0.0.1", 9999)) as client:
        result = await client.quote("apple", 3)

    quote_once(("127.0.0.1", 9999), "apple", 3)      # blocking, one quote
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from dataclasses import dataclass
from typing import Any

from udp_price.address import Address, format_address
from udp_price.catalog import format_money
from udp_price.client.congestion import CongestionConfig, CongestionController
from udp_price.client.recovery import RetryBudget, RttEstimator
from udp_price.client.retry import Outcome, RetryPolicy
from udp_price.client.session import Answered, ClientSession, Event, Failed
from udp_price.errors import QuoteError
from udp_price.wire import (
    BatchReply,
    BatchRequest,
    LineResult,
    ListReply,
    ListRequest,
    QuoteReply,
    QuoteRequest,
    Request,
    Status,
    check_quantity,
    encode_batch_request,
    encode_prefix,
    encode_request,
    normalize_item,
    normalize_prefix,
)
from wire_format import LIST_PAGE_SIZE, MAX_QUANTITY

LIST_WINDOW = 32
"""List page requests in flight at once (like bulk's --window): a full listing of a million items
(62,500 pages) then flows at the pace of the round trip without overflowing any buffer."""


class NoAnswer(QuoteError):
    """No matching reply arrived before the deadline or the last attempt's timeout."""

    def __init__(
        self,
        server: Address,
        attempts: int,
        elapsed_s: float,
        outcome: Outcome,
        refused: bool,
        status: Status | None = None,
    ) -> None:
        why = {
            Outcome.DEADLINE: "deadline passed",
            Outcome.REFUSED: "nothing listens on that port",
            Outcome.UNREACHABLE: "the server answered nothing for a whole deadline",
            Outcome.BUDGET: "deadline passed while the retry budget held retransmissions back",
            Outcome.VERSION: "the server speaks another protocol version",
        }.get(outcome, "all attempts timed out")
        hint = " (ICMP port unreachable: is the server running?)" if refused else ""
        if status is not None and outcome is not Outcome.VERSION:
            hint += f" (the server kept answering {status.name}: our datagrams arrive damaged)"
        super().__init__(
            f"no answer from {format_address(server)} after {attempts} attempt(s) in {elapsed_s:.2f} s: {why}{hint}"
        )
        self.attempts = attempts
        self.elapsed_s = elapsed_s
        self.outcome = outcome


@dataclass(frozen=True)
class QuoteResult:
    """A reply matched to its request. Money in integer minor units; check ``ok`` before using it."""

    item: str
    quantity: int
    status: Status
    unit_price: int
    total: int
    attempts: int
    request_id: int
    latency_s: float
    catalog_version: int

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    def as_json(self) -> dict[str, Any]:
        """Money as decimal strings; null in a failure (whatever the reply's money fields held)."""
        return {
            "item": self.item,
            "quantity": self.quantity,
            "unit_price": format_money(self.unit_price) if self.ok else None,
            "total": format_money(self.total) if self.ok else None,
            "status": self.status.name,
            "attempts": self.attempts,
            "request_id": f"{self.request_id:016x}",
            "latency_ms": round(self.latency_s * 1000, 3),
            "catalog_version": self.catalog_version,
        }


@dataclass(frozen=True)
class BatchResult:
    """Per-line results of one batch, in the order the lines were given."""

    lines: tuple[tuple[str, int], ...]
    results: tuple[LineResult, ...]
    attempts: int
    request_id: int
    latency_s: float
    catalog_version: int


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, client: QuoteClient) -> None:
        self.client = client

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.client._on_datagram(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable on a connected socket; the session decides what it means.
        self.client._on_error()


class QuoteClient:
    """Async quote client over one connected UDP socket; many quotes may be in flight at once.

    A thin asyncio shell: every decision (timers, retransmissions, loss detection, the retry
    budget, BUSY, ICMP errors, giving up, which replies to believe) is made by the pure
    ``client_session.ClientSession``; this class moves bytes and reads the clock. The socket
    is connect()ed to the server, so the kernel discards datagrams from any other address.

        async with QuoteClient(("127.0.0.1", 9999)) as client:
            result = await client.quote("apple", 3)
    """

    def __init__(
        self,
        server: Address,
        policy: RetryPolicy | None = None,
        budget: RetryBudget | None = None,
        local_addr: tuple[str, int] | None = None,
        congestion: CongestionConfig | None = None,
    ) -> None:
        self.server = server
        self.congestion = congestion
        """None: no congestion window (the caller bounds what is in flight, as a single quote does)."""
        self.local_addr = local_addr
        """Source address to bind, e.g. ("127.0.0.2", 0); None lets the kernel choose."""
        self.policy = policy or RetryPolicy()
        self.session = ClientSession(self.policy, 0.0, budget)
        self._futures: dict[int, asyncio.Future[Event]] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    @property
    def stats(self) -> Counter[str]:
        return self.session.stats

    @property
    def rtt(self) -> RttEstimator:
        return self.session.rtt

    @property
    def unreachable(self) -> bool:
        """True once the session has judged the server gone: new requests fail at once."""
        return self.session.unreachable is not None

    def keep_unreachable_verdict(self) -> None:
        """Once the server is judged unreachable, fail every later request at once instead of
        trying again (bulk: the rest of the file fails unsent rather than waiting out a deadline)."""
        self.session.keep_verdict = True

    async def __aenter__(self) -> QuoteClient:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), remote_addr=self.server, local_addr=self.local_addr
        )
        self._transport, self._loop = transport, loop
        keep_verdict = self.session.keep_verdict
        controller = CongestionController(self.congestion) if self.congestion is not None else None
        self.session = ClientSession(self.policy, loop.time(), self.session.budget, controller)
        self.session.keep_verdict = keep_verdict
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def _new_request_id(self) -> int:
        while True:
            rid = secrets.randbits(64)
            if rid not in self._futures and not self.session.knows(rid):
                return rid

    async def quote(self, item: str, quantity: int) -> QuoteResult:
        """Quote ``quantity`` x ``item``. Raises NoAnswer when no valid reply comes in time,
        ValueError when the request cannot be encoded (item too long) or the quantity breaks the
        rule in udp_price.wire.items (a whole number from 1 to MAX_QUANTITY): nothing is sent then."""
        check_quantity(quantity)
        request = QuoteRequest(self._new_request_id(), normalize_item(item), quantity)
        encode_request(request)  # a request that cannot be encoded is the caller's ValueError, now
        answered = await self._call(request)
        reply = answered.reply
        assert isinstance(reply, QuoteReply)
        return QuoteResult(
            item=request.item,
            quantity=request.quantity,
            status=reply.status,
            unit_price=reply.unit_price,
            total=reply.total,
            attempts=answered.attempts,
            request_id=request.request_id,
            latency_s=answered.latency_s,
            catalog_version=reply.catalog_version,
        )

    async def quote_batch(self, lines: list[tuple[str, int]]) -> BatchResult:
        """Quote up to MAX_BATCH lines in one datagram; results in the same order.
        Raises NoAnswer or ValueError like ``quote``."""
        for _, quantity in lines:
            check_quantity(quantity)
        request = BatchRequest(self._new_request_id(), tuple((normalize_item(i), q) for i, q in lines))
        encode_batch_request(request)
        answered = await self._call(request)
        reply = answered.reply
        assert isinstance(reply, BatchReply)
        results = reply.results or tuple(LineResult(reply.status) for _ in request.lines)
        return BatchResult(
            request.lines, results, answered.attempts, request.request_id, answered.latency_s, reply.catalog_version
        )

    async def list_items(
        self, prefix: str = "", limit: int | None = None, window: int = LIST_WINDOW
    ) -> tuple[int, list[tuple[str, int]]]:
        """The server's catalog as (catalog version, [(item, unit price in cents)]) sorted by name;
        with ``prefix``, only the items whose name starts with it (the server filters); with
        ``limit``, at most that many (only the pages needed are asked for).

        At most ``window`` page requests are in flight at once, as bulk does: firing every page
        of a big catalog at once would overflow socket buffers and the server's rate limit. If
        the catalog changes between pages (a reload), the listing starts over so it never mixes
        two versions. Raises NoAnswer like ``quote``, ValueError for a prefix the wire cannot carry.
        """
        prefix = normalize_prefix(prefix)
        encode_prefix(prefix)  # a prefix that cannot be encoded is the caller's ValueError, now
        for _ in range(3):
            first = await self._list_page(0, prefix)
            wanted = first.pages if limit is None else min(first.pages, max(1, -(-limit // LIST_PAGE_SIZE)))
            pages = [first, *await self._pages(range(1, wanted), prefix, first.catalog_version, max(1, window))]
            if all(p.catalog_version == first.catalog_version and p.status is Status.OK for p in pages):
                entries = [entry for p in pages for entry in p.entries]
                return first.catalog_version, entries if limit is None else entries[:limit]
            self.stats["list_restarts"] += 1
        raise QuoteError("the catalog kept changing while it was being listed")

    async def _pages(self, numbers: range, prefix: str, version: int, window: int) -> list[ListReply]:
        """Pages ``numbers`` in order, ``window`` workers each taking the next page number; stops
        early (the caller starts over) as soon as a page shows another catalog version."""
        out: dict[int, ListReply] = {}
        todo = iter(numbers)
        changed = False

        async def worker() -> None:
            nonlocal changed
            for number in todo:
                if changed:
                    return
                reply = await self._list_page(number, prefix)
                out[number] = reply
                changed = changed or reply.catalog_version != version or reply.status is not Status.OK

        await asyncio.gather(*(worker() for _ in range(min(window, len(numbers)))))
        return [out[n] for n in sorted(out)]

    async def _list_page(self, page: int, prefix: str = "") -> ListReply:
        answered = await self._call(ListRequest(self._new_request_id(), page, prefix))
        reply = answered.reply
        if not isinstance(reply, ListReply):
            raise QuoteError(
                f"the server answered {reply.status.name} to a list request: "
                "it may be a udp-price too old to list its catalog"
            )
        return reply

    async def _call(self, request: Request) -> Answered:
        """Hand ``request`` to the session and wait for its Answered event; NoAnswer on Failed."""
        if self._transport is None or self._loop is None:
            raise RuntimeError("use 'async with QuoteClient(...)' before quoting")
        future: asyncio.Future[Event] = self._loop.create_future()
        self._futures[request.request_id] = future
        self._pump(self.session.send(request, self._loop.time()))
        try:
            event = await future
        finally:
            self._futures.pop(request.request_id, None)
        if isinstance(event, Failed):
            raise NoAnswer(self.server, event.attempts, event.elapsed_s, event.outcome, event.refused, event.status)
        return event

    def _pump(self, events: list[Event]) -> None:
        """Send what the session queued, resolve finished requests, re-arm the one timer."""
        assert self._loop is not None
        if self._transport is not None:
            for data in self.session.datagrams_to_send():
                self._transport.sendto(data)
        for event in events:
            future = self._futures.get(event.request_id)
            if future is not None and not future.done():
                future.set_result(event)
        when = self.session.timer()
        if when is not None and (self._timer_at is None or when < self._timer_at):
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(when, self._on_timer)
            self._timer_at = when

    def _on_timer(self) -> None:
        assert self._loop is not None
        self._timer, self._timer_at = None, None
        self._pump(self.session.handle_timer(self._loop.time()))

    def _on_datagram(self, data: bytes) -> None:
        assert self._loop is not None
        self._pump(self.session.datagram_received(data, self._loop.time()))

    def _on_error(self) -> None:
        assert self._loop is not None
        self._pump(self.session.error_received(self._loop.time()))


def describe_status(result: QuoteResult) -> str:
    """One human line for a non-OK reply."""
    match result.status:
        case Status.UNKNOWN_ITEM:
            return f"unknown item {result.item!r}"
        case Status.BAD_QUANTITY:
            return f"bad quantity {result.quantity}: must be 1 to {MAX_QUANTITY}"
        case Status.OVERFLOW:
            return f"total for {result.quantity} x {result.item!r} is too large to quote"
        case Status.UNSUPPORTED_VERSION:
            return "the server does not speak this protocol version"
        case _:
            return f"server answered {result.status.name}"


def quote_once(server: Address, item: str, quantity: int, policy: RetryPolicy | None = None) -> QuoteResult:
    """Blocking convenience: one quote with a fresh client."""

    async def run() -> QuoteResult:
        async with QuoteClient(server, policy) as client:
            return await client.quote(item, quantity)

    return asyncio.run(run())


def list_once(
    server: Address, policy: RetryPolicy | None = None, prefix: str = "", limit: int | None = None
) -> tuple[int, list[tuple[str, int]]]:
    """Blocking convenience: the server's catalog, (version, [(item, cents)]); ``prefix`` and
    ``limit`` as for QuoteClient.list_items."""

    async def run() -> tuple[int, list[tuple[str, int]]]:
        async with QuoteClient(server, policy) as client:
            return await client.list_items(prefix, limit)

    return asyncio.run(run())
