"""Many quotes from Python as a stream: ``QuoteClient.quote_stream``'s engine, and the checks a
line must pass before it is sent (shared with ``quote`` and ``quote_batch``).

Pairs go out ``batch`` to a datagram with at most ``window`` datagrams in flight, as the bulk
command sends them, and come back one ``LineQuote`` per pair in input order. Memory is bounded by
``window * batch`` pairs however long the input. Nothing is skipped: a pair that cannot be sent
raises its ValueError in its place, after every pair before it was yielded.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from typing import NamedTuple, Protocol

from udp_price.wire import LineResult, Status, check_quantity, encode_item, normalize_item
from wire_format import MAX_BATCH

Pair = tuple[str, int]
"""(item, quantity), as quote_batch and quote_stream take them."""


class BatchResult(Protocol):
    """What ``quote_batch`` returns (udp_price.client.api.BatchResult), as far as a stream reads it."""

    @property
    def lines(self) -> tuple[Pair, ...]: ...
    @property
    def results(self) -> tuple[LineResult, ...]: ...
    @property
    def attempts(self) -> int: ...
    @property
    def catalog_version(self) -> int: ...


class LineQuote(NamedTuple):
    """One line's answer from ``QuoteClient.quote_stream``; money in integer minor units."""

    item: str
    quantity: int
    status: Status
    unit_price: int
    total: int
    attempts: int
    catalog_version: int

    @property
    def ok(self) -> bool:
        return self.status is Status.OK


@functools.lru_cache(maxsize=4096)
def wire_item(name: str) -> str:
    """The normalized name, checked to fit the wire (BadItem, a ValueError, if not); remembered,
    as a program quotes a few names over and over."""
    item = normalize_item(name)
    encode_item(item)
    return item


def wire_line(item: str, quantity: int) -> tuple[str, int]:
    """(normalized item, quantity) or the ValueError ``quote`` would raise for it."""
    check_quantity(quantity)
    return wire_item(item), quantity


async def stream_quotes(
    quote_batch: Callable[[list[Pair]], Awaitable[BatchResult]],
    lines: Iterable[Pair] | AsyncIterable[Pair],
    batch: int,
    window: int,
) -> AsyncIterator[LineQuote]:
    """See QuoteClient.quote_stream; ``quote_batch`` sends one batch and waits for its answer."""
    if not 1 <= batch <= MAX_BATCH or window < 1:
        raise ValueError(f"quote_stream: batch must be 1 to {MAX_BATCH} and window at least 1")
    source = _pairs(lines)
    pending: deque[asyncio.Future[BatchResult]] = deque()
    more = True
    try:
        while True:
            while more and len(pending) < window:
                chunk, error, more = await _take(source, batch)
                if chunk:
                    pending.append(asyncio.ensure_future(quote_batch(chunk)))
                if error is not None:
                    failed: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
                    failed.set_exception(error)
                    pending.append(failed)
                    more = True  # the pairs after a bad one are still quoted
            if not pending:
                return
            b = await pending.popleft()
            attempts, version = b.attempts, b.catalog_version
            for (item, quantity), r in zip(b.lines, b.results, strict=True):
                yield LineQuote(item, quantity, r.status, r.unit_price, r.total, attempts, version)
    finally:
        for f in pending:
            if f.done() and not f.cancelled():
                f.exception()  # retrieved: a failure nobody reached is no "never retrieved" warning
            f.cancel()


async def _pairs(lines: Iterable[Pair] | AsyncIterable[Pair]) -> AsyncIterator[Pair]:
    if isinstance(lines, AsyncIterable):
        async for pair in lines:
            yield pair
    else:
        for pair in lines:
            yield pair


async def _take(source: AsyncIterator[Pair], n: int) -> tuple[list[Pair], ValueError | None, bool]:
    """Up to ``n`` valid pairs from ``source``: (pairs, the ValueError of a bad pair that ended
    them early or None, whether ``source`` may hold more)."""
    chunk: list[Pair] = []
    while len(chunk) < n:
        try:
            item, quantity = await anext(source)
        except StopAsyncIteration:
            return chunk, None, False
        try:
            chunk.append(wire_line(item, quantity))
        except ValueError as e:
            return chunk, e, True
    return chunk, None, True
