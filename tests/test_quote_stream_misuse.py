"""``quote_stream`` misused: every kind of bad pair, and a source that raises, end the stream in
their place, after every pair before them was yielded, and nothing after them is sent.

Each case puts 100 good pairs (more than three batches of 32, so some are in flight when the bad
one is met) ahead of the bad pair and good pairs after it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Iterator

import pytest
from helpers import RunningServer

from udp_price.client.api import QuoteClient

GOOD = [("apple", 1)] * 100

BAD_PAIRS: list[tuple[object, type[Exception], str]] = [
    (("apple", 0), ValueError, "pair 100 ('apple', 0): quantity 0 is out of range"),
    (("x" * 100, 1), ValueError, "pair 100 ('xxx"),
    (("apple", "3"), ValueError, "pair 100 ('apple', '3'): quantity must be an int, got str"),
    (("apple", 2.5), ValueError, "quantity must be an int, got float"),
    (("apple", True), ValueError, "quantity must be an int, got bool"),
    ((None, 1), TypeError, "pair 100 (None, 1): item must be a str, got NoneType"),
    ((["apple"], 1), TypeError, "item must be a str, got list"),
    (("apple",), ValueError, "pair 100 is not an (item, quantity) pair: ('apple',)"),
    (("apple", 1, 2), ValueError, "pair 100 is not an (item, quantity) pair: ('apple', 1, 2)"),
    (None, TypeError, "pair 100 is not an (item, quantity) pair: None"),
    (7, TypeError, "pair 100 is not an (item, quantity) pair: 7"),
]


async def collect(client: QuoteClient, pairs: object) -> tuple[int, BaseException | None]:
    """(pairs yielded, all exact apples; the exception that ended the stream or None)."""
    yielded = 0
    try:
        async for q in client.quote_stream(pairs):  # type: ignore[arg-type]
            assert q.ok and q.item == "apple" and q.quantity == 1
            yielded += 1
    except (TypeError, ValueError, RuntimeError) as e:
        return yielded, e
    return yielded, None


def run(server: RunningServer, pairs: object) -> tuple[int, BaseException | None, int]:
    """(yielded, error, requests sent, retransmissions not counted)."""

    async def go() -> tuple[int, BaseException | None, int]:
        async with QuoteClient(server.address) as client:
            yielded, error = await collect(client, pairs)
            return yielded, error, client.stats["sent"] - client.stats["retransmissions"]

    return asyncio.run(go())


@pytest.mark.parametrize(("bad", "kind", "message"), BAD_PAIRS, ids=repr)
def test_a_bad_pair_raises_in_its_place_naming_its_index(
    server: RunningServer, bad: object, kind: type[Exception], message: str
) -> None:
    yielded, error, requests = run(server, [*GOOD, bad, *GOOD])
    assert yielded == 100
    assert isinstance(error, kind) and message in str(error), error
    assert requests == 4  # the 100 pairs ahead of it, 32 a batch; none of the pairs after it


def test_an_exception_from_a_sync_source_is_re_raised_after_the_pairs_before_it(server: RunningServer) -> None:
    broke = RuntimeError("source broke")

    def source() -> Iterator[tuple[str, int]]:
        yield from GOOD
        raise broke

    yielded, error, requests = run(server, source())
    assert (yielded, error, requests) == (100, broke, 4)


def test_an_exception_from_an_async_source_is_re_raised_after_the_pairs_before_it(server: RunningServer) -> None:
    broke = RuntimeError("source broke")

    async def source() -> AsyncIterator[tuple[str, int]]:
        for pair in GOOD:
            yield pair
        raise broke

    yielded, error, requests = run(server, source())
    assert (yielded, error, requests) == (100, broke, 4)


def test_nothing_after_an_early_bad_pair_is_sent(server: RunningServer) -> None:
    """The stream cannot resume after it raised, so the 20,000 pairs after the bad one must not
    fill the window with requests whose answers nobody can read: one request, for the 5 before."""
    pairs: Iterable[object] = [*GOOD[:5], ("apple", 0), *[("apple", 1)] * 20_000]
    yielded, error, requests = run(server, pairs)
    assert (yielded, requests) == (5, 1) and isinstance(error, ValueError)
