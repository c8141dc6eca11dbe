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
import struct
import time
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any

from udp_price.address import Address
from udp_price.auth import ClientAuth, Key
from udp_price.client.congestion import CongestionConfig, CongestionController
from udp_price.client.events import Answered, Event, Failed
from udp_price.client.recovery import RetryBudget, RttEstimator
from udp_price.client.results import BatchResult, NoAnswer, QuoteResult, describe_status
from udp_price.client.retry import RetryPolicy
from udp_price.client.session import ClientSession
from udp_price.client.stream import LineQuote, Pair, stream_quotes, wire_line
from udp_price.errors import EncodeError, QuoteError
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
    encode_prefix,
    normalize_prefix,
)
from wire_format import AUTH_WINDOW_S, LIST_PAGE_SIZE, MAX_BATCH

# The results and NoAnswer live in client.results; they are part of this module's API too.
__all__ = ["BatchResult", "NoAnswer", "QuoteClient", "QuoteResult", "describe_status", "list_once", "quote_once"]

_IDS = struct.Struct(">256Q")
LIST_WINDOW = 32
"""List page requests in flight at once (like bulk's --window): a full listing of a million items
(62,500 pages) then flows at the pace of the round trip without overflowing any buffer."""


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
        key: Key | None = None,
        congestion: CongestionConfig | None = None,
    ) -> None:
        self.server = server
        self.auth = ClientAuth(key) if key is not None else None
        """With a key every datagram sent is signed and only replies signed under it are believed."""
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
        self._rearm_soon = False
        self._ids: list[int] = []

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
        controller = None
        if self.congestion is not None:  # periodic slowdowns keep to the wall clock, shared with other senders
            controller = CongestionController(self.congestion, clock_offset=lambda: time.time() - loop.time())
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
        """A fresh random 64-bit id (unguessable: a forged reply must guess it). Drawn from the
        OS 256 at a time: one urandom call per id was 2.5% of a bulk run."""
        while True:
            if not self._ids:
                self._ids = list(_IDS.unpack(secrets.token_bytes(_IDS.size)))
            rid = self._ids.pop()
            if rid not in self._futures and not self.session.knows(rid):
                return rid

    async def quote(self, item: str, quantity: int) -> QuoteResult:
        """Quote ``quantity`` x ``item``. Raises NoAnswer when no valid reply comes in time,
        ValueError when the request cannot be encoded (item too long) or the quantity breaks the
        rule in udp_price.wire.items (a whole number from 1 to MAX_QUANTITY): nothing is sent then."""
        item, quantity = wire_line(item, quantity)  # a request that cannot be encoded is the caller's ValueError, now
        request = QuoteRequest(self._new_request_id(), item, quantity)
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
        if not 1 <= len(lines) <= MAX_BATCH:
            raise EncodeError(f"a batch holds 1 to {MAX_BATCH} lines, not {len(lines)}")
        request = BatchRequest(self._new_request_id(), tuple(wire_line(i, q) for i, q in lines))
        answered = await self._call(request)
        reply = answered.reply
        assert isinstance(reply, BatchReply)
        results = reply.results or tuple(LineResult(reply.status) for _ in request.lines)
        return BatchResult(
            request.lines, results, answered.attempts, request.request_id, answered.latency_s, reply.catalog_version
        )

    def quote_stream(
        self,
        lines: Iterable[Pair] | AsyncIterable[Pair],
        batch: int = MAX_BATCH,
        window: int = 64,
    ) -> AsyncIterator[LineQuote]:
        """Quote many (item, quantity) pairs, yielding one LineQuote per pair, in input order.

        Pairs go out ``batch`` per datagram with up to ``window`` datagrams in flight, as the bulk
        command sends them; memory holds at most ``window * batch`` pairs, however long ``lines``
        is. Nothing is skipped: a pair that cannot be sent (not an (item, quantity) pair, an item
        that is not a str or too long, a bad quantity) raises a ValueError or TypeError naming its
        index when its turn comes, after every pair before it was yielded; an exception raised by
        ``lines`` itself is re-raised the same way, and a batch that gets no answer raises
        NoAnswer. The stream ends at that point: nothing after it is read from ``lines`` or sent.
        Leaving the loop early (break, an exception) cancels the requests still in flight.

            async for q in client.quote_stream([("apple", 3), ("pear", 1)]):
                print(q.item, q.quantity, q.status.name, q.total)
        """
        return stream_quotes(self.quote_batch, lines, batch, window)

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
            raise NoAnswer(
                self.server,
                event.attempts,
                event.elapsed_s,
                event.outcome,
                event.refused,
                event.status,
                self._auth_hint(),
            )
        return event

    def _pump(self, events: list[Event]) -> None:
        """Send what the session queued, resolve finished requests; the one timer is re-armed once
        per turn of the event loop (see _rearm), not once per datagram."""
        assert self._loop is not None
        if self._transport is not None:
            auth = self.auth
            for data in self.session.datagrams_to_send():
                self._transport.sendto(data if auth is None else auth.sign(data, time.time()))
        futures = self._futures
        for event in events:
            future = futures.get(event.request_id)
            if future is not None and not future.done():
                future.set_result(event)
        if not self._rearm_soon:
            self._rearm_soon = True
            self._loop.call_soon(self._rearm)

    def _rearm(self) -> None:
        """Arm the timer for the session's next deadline if it is earlier than the armed one.
        Computing that deadline costs more than a datagram's own work with 64 requests pending,
        and a turn of the loop is microseconds against timers of milliseconds."""
        assert self._loop is not None
        self._rearm_soon = False
        if self._transport is None:  # closed meanwhile: nothing to time any more
            return
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
        if self.auth is not None:
            opened = self.auth.open(data, time.time())
            if isinstance(opened, str):  # forged, unsigned, another key, or out of the time window
                self.stats[f"auth.rejected.{opened}"] += 1
                return
            data = opened
        self._pump(self.session.datagram_received(data, self._loop.time()))

    def _auth_hint(self) -> str:
        """Why a keyed client may hear nothing: a server without keys, or one that does not know
        our key, stays silent by design (it never answers unsigned, and never answers a bad tag)."""
        if self.auth is None:
            return ""
        rejected = sum(v for k, v in self.stats.items() if k.startswith("auth.rejected."))
        seen = f"; {rejected} reply(ies) without a valid tag under our key were refused" if rejected else ""
        return (
            f" (no authenticated reply with key id {self.auth.key.key_id}{seen}: the server may not know this key, "
            f"may run without --keys, or its clock may differ from ours by more than {AUTH_WINDOW_S} s)"
        )

    def _on_error(self) -> None:
        assert self._loop is not None
        self._pump(self.session.error_received(self._loop.time()))


def quote_once(
    server: Address, item: str, quantity: int, policy: RetryPolicy | None = None, key: Key | None = None
) -> QuoteResult:
    """Blocking convenience: one quote with a fresh client (signed with ``key`` if given)."""

    async def run() -> QuoteResult:
        async with QuoteClient(server, policy, key=key) as client:
            return await client.quote(item, quantity)

    return asyncio.run(run())


def list_once(
    server: Address,
    policy: RetryPolicy | None = None,
    prefix: str = "",
    limit: int | None = None,
    key: Key | None = None,
) -> tuple[int, list[tuple[str, int]]]:
    """Blocking convenience: the server's catalog, (version, [(item, cents)]); ``prefix`` and
    ``limit`` as for QuoteClient.list_items."""

    async def run() -> tuple[int, list[tuple[str, int]]]:
        async with QuoteClient(server, policy, key=key) as client:
            return await client.list_items(prefix, limit)

    return asyncio.run(run())
