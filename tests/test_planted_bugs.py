"""Tests written against bugs a reviewer planted one at a time and the suite let through: each
asserts the promise the planted bug broke (a wrong-count batch is refused, a reply from the
future is not believed, the stream's in-flight bound). The congestion rules, the ordered writer
and the capture's UDP checksum are in tests/test_planted_bugs_rules.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fast_path import PRICES, pair

from udp_price.auth import ClientAuth, Key, sign
from udp_price.client.stream import Pair, stream_quotes
from udp_price.wire import (
    BatchReply,
    BatchRequest,
    LineResult,
    QuoteReply,
    Status,
    decode_any_reply,
    encode_batch_request,
    encode_reply,
)
from udp_price.wire.framing import seal
from wire_format import AUTH_WINDOW_S, CRC_SIZE, MAX_BATCH

# ------------------------------------------------------------------ a batch whose count lies

COUNT_OFFSET = 12  # magic (2), version, kind, request id (8): then the u8 line count


def wrong_count_batch(request_id: int, lines: int, declared: int) -> bytes:
    """A batch of ``lines`` plain lines whose count field says ``declared``, correctly sealed
    (a good CRC32): only the count check can refuse it."""
    items = sorted(PRICES)
    data = encode_batch_request(BatchRequest(request_id, tuple((items[i % len(items)], i + 1) for i in range(lines))))
    assert data[COUNT_OFFSET] == lines
    body = bytearray(data[:-CRC_SIZE])
    body[COUNT_OFFSET] = declared
    return seal(bytes(body))


@pytest.mark.parametrize(
    ("lines", "declared"),
    [(3, 0), (3, 2), (3, 4), (1, 0), (2, 1), (MAX_BATCH, 0), (MAX_BATCH, MAX_BATCH - 1), (MAX_BATCH, MAX_BATCH + 1)],
)
def test_a_sealed_batch_whose_count_differs_from_its_length_is_malformed_on_both_paths(
    lines: int, declared: int
) -> None:
    """The fast path must refuse what the general path refuses: the same MALFORMED reply, never OK."""
    fast, general = pair()
    data = wrong_count_batch(0x77, lines, declared)
    addr = ("127.0.0.1", 1000)
    out_fast, out_general = fast.handle_datagram(data, addr, 1.0), general.handle_datagram(data, addr, 1.0)
    assert out_general is not None
    reply = decode_any_reply(out_general)
    assert isinstance(reply, BatchReply)
    assert (reply.request_id, reply.status, reply.results) == (0x77, Status.MALFORMED, ())
    assert out_fast == out_general
    assert fast.counters() == general.counters()


@settings(max_examples=200, deadline=None)  # no timing in a unit test: a cold first example is no failure
@given(st.integers(1, MAX_BATCH), st.integers(0, 255), st.integers(0, 2**64 - 1))
def test_any_declared_count_is_answered_alike_and_only_the_true_one_is_ok(
    lines: int, declared: int, request_id: int
) -> None:
    """What tests/test_fast_batch.py's generator rarely makes: plain lines (so the fast path would
    take them) under a count rewritten and resealed, so only the count check stands in the way."""
    fast, general = pair()
    data = wrong_count_batch(request_id, lines, declared)
    addr = ("127.0.0.1", 1000)
    out_fast, out_general = fast.handle_datagram(data, addr, 1.0), general.handle_datagram(data, addr, 1.0)
    assert out_fast == out_general
    assert out_general is not None
    reply = decode_any_reply(out_general)
    assert isinstance(reply, BatchReply)
    assert reply.status is (Status.OK if declared == lines else Status.MALFORMED)


# ------------------------------------------------------------------ the client's time window

KEY = Key(1, b"k" * 32)
WALL = 1_800_000_000  # whole seconds: the millisecond arithmetic is exact
WINDOW_MS = AUTH_WINDOW_S * 1000
PLAIN_REPLY = QuoteReply(0x55, Status.OK, "apple", 50, 150)


@pytest.mark.parametrize(
    ("offset_ms", "believed"),
    [
        (0, True),
        (WINDOW_MS, True),  # "within 300 s" (docs/protocol.md): both edges are inside
        (-WINDOW_MS, True),
        (WINDOW_MS + 1, False),
        (-WINDOW_MS - 1, False),
        (400_000, False),  # from the future, well beyond the window
        (-400_000, False),
    ],
)
def test_the_client_believes_replies_signed_within_the_window_only(offset_ms: int, believed: bool) -> None:
    signed = sign(encode_reply(PLAIN_REPLY), KEY, WALL * 1000 + offset_ms)
    opened = ClientAuth(KEY).open(signed, float(WALL))
    if believed:
        assert isinstance(opened, bytes)
        assert decode_any_reply(opened) == PLAIN_REPLY
    else:
        assert opened == "out_of_window"


# ------------------------------------------------------------------ the stream's in-flight bound


class FakeBatch(NamedTuple):
    lines: tuple[Pair, ...]
    results: tuple[LineResult, ...]
    attempts: int
    catalog_version: int


class InFlightCounter:
    """A quote_batch that counts batches asked for and not yet answered; each answer takes a few
    turns of the event loop, so the stream has every chance to send more meanwhile."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.most = 0
        self.batches = 0

    def quote_batch(self, chunk: list[Pair]) -> asyncio.Future[FakeBatch]:
        self.in_flight += 1
        self.batches += 1
        self.most = max(self.most, self.in_flight)
        return asyncio.ensure_future(self._answer(chunk))

    async def _answer(self, chunk: list[Pair]) -> FakeBatch:
        for _ in range(3):
            await asyncio.sleep(0)
        self.in_flight -= 1
        return FakeBatch(tuple(chunk), tuple(LineResult(Status.OK, 50, 50 * q) for _, q in chunk), 1, 1)


@pytest.mark.parametrize("window", [1, 2, 3, 5])
def test_quote_stream_never_has_more_than_window_batches_in_flight(window: int) -> None:
    pairs = [("apple", i % 50 + 1) for i in range(40)]
    counter = InFlightCounter()

    async def source() -> AsyncIterator[Pair]:
        for p in pairs:
            yield p

    async def run() -> list[int]:
        return [q.quantity async for q in stream_quotes(counter.quote_batch, source(), 4, window)]

    assert asyncio.run(run()) == [q for _, q in pairs], "every pair answered, in order"
    assert counter.batches == 10
    assert counter.most == window, "the window is used, and never exceeded"
