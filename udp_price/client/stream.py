"""Many quotes from Python as a stream: ``QuoteClient.quote_stream``'s engine, and the checks a
line must pass before it is sent (shared with ``quote`` and ``quote_batch``).

Pairs go out ``batch`` to a datagram with at most ``window`` datagrams in flight, as the bulk
command sends them, and come back one ``LineQuote`` per pair in input order. Memory is bounded by
``window * batch`` pairs however long the input. Nothing is skipped: a pair that cannot be sent
(wrong shape, wrong types, out of range) raises in its place, naming its index, after every pair
before it was yielded; an exception from the caller's source is re-raised the same way. The
stream ends there (an async generator that raised cannot be resumed), so nothing after that
point is read from the source or sent: no request goes out whose answer nobody could read.
"""

from __future__ import annotations

import asyncio
import functools
import reprlib
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
    """(normalized item, quantity) or the ValueError ``quote`` would raise for it (TypeError
    for an item that is not a str, which ``normalize_item`` would meet as an AttributeError)."""
    check_quantity(quantity)
    if not isinstance(item, str):
        raise TypeError(f"item must be a str, got {type(item).__name__}")
    return wire_item(item), quantity


_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 40
_shown = _repr.repr  # a pair as an error shows it: a 10 MB item name is no error message


def checked_pair(index: int, pair: object) -> tuple[str, int]:
    """``pair`` as a wire line, or a ValueError/TypeError that names its index in the stream:
    a stream's caller needs to know which of a million pairs was wrong."""
    item: str
    quantity: int
    try:
        item, quantity = pair  # type: ignore[misc]
    except (TypeError, ValueError) as e:
        kind = ValueError if isinstance(e, ValueError) else TypeError
        raise kind(f"pair {index} is not an (item, quantity) pair: {_shown(pair)}") from None
    try:
        return wire_line(item, quantity)
    except (TypeError, ValueError) as e:
        raise type(e)(f"pair {index} {_shown(pair)}: {e}") from e


async def stream_quotes(
    quote_batch: Callable[[list[Pair]], Awaitable[BatchResult]],
    lines: Iterable[Pair] | AsyncIterable[Pair],
    batch: int,
    window: int,
) -> AsyncIterator[LineQuote]:
    """See QuoteClient.quote_stream; ``quote_batch`` sends one batch and waits for its answer."""
    if not 1 <= batch <= MAX_BATCH or window < 1:
        raise ValueError(f"quote_stream: batch must be 1 to {MAX_BATCH} and window at least 1")
    source = _Source(lines)
    pending: deque[asyncio.Future[BatchResult]] = deque()
    try:
        while True:
            while source.more and len(pending) < window:
                chunk, error = await source.take(batch)
                if chunk:
                    pending.append(asyncio.ensure_future(quote_batch(chunk)))
                if error is not None:  # raised in its place, once the batches ahead are yielded
                    failed: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
                    failed.set_exception(error)
                    pending.append(failed)
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


class _Source:
    """The caller's pairs, checked and counted; ``more`` turns False at their end, at the first
    bad pair and at an exception from the source, after which nothing more is read."""

    def __init__(self, lines: Iterable[Pair] | AsyncIterable[Pair]) -> None:
        self._pairs = _pairs(lines)
        self.taken = 0
        self.more = True

    async def take(self, n: int) -> tuple[list[Pair], Exception | None]:
        """Up to ``n`` valid pairs: (pairs, the exception that ended them early or None)."""
        chunk: list[Pair] = []
        while len(chunk) < n:
            try:
                pair = await anext(self._pairs)
            except StopAsyncIteration:
                self.more = False
                return chunk, None
            except Exception as e:  # the caller's own error, re-raised in its place
                self.more = False
                return chunk, e
            try:
                chunk.append(checked_pair(self.taken, pair))
            except (TypeError, ValueError) as e:
                self.more = False
                return chunk, e
            self.taken += 1
        return chunk, None


async def _pairs(lines: Iterable[Pair] | AsyncIterable[Pair]) -> AsyncIterator[Pair]:
    if isinstance(lines, AsyncIterable):
        async for pair in lines:
            yield pair
    else:
        for pair in lines:
            yield pair
