"""The server's fast path for batches against its general path: same bytes, same counters.

A batch goes the fast way only when it is intact and every line is plain (a catalog item's exact
wire field, a total in range); anything else (an unknown or non-canonical name, a bad quantity,
an overflow, a damaged or flagged datagram) must be answered exactly as the general path does."""

from __future__ import annotations

import struct
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st
from test_fast_path import NAMES, PRICES, pair, quantities

from udp_price.catalog import Catalog
from udp_price.wire import BatchRequest, encode_batch_request
from wire_format import MAX_BATCH


@st.composite
def batches(draw: st.DrawFn) -> bytes:
    plain = draw(st.booleans())  # half the batches only plain lines, so the fast path really runs
    names = st.sampled_from(sorted(PRICES)) if plain else st.sampled_from(NAMES)
    qty = st.integers(1, 500) if plain else quantities
    lines = draw(st.lists(st.tuples(names, qty), min_size=1, max_size=MAX_BATCH))
    data = encode_batch_request(BatchRequest(draw(st.integers(0, 5)), tuple(lines), draw(st.integers(0, 3))))
    if draw(st.booleans()):
        return data
    body = bytearray(data[:-4])
    body[draw(st.integers(0, len(body) - 1))] = draw(st.integers(0, 255))
    return bytes(body) + (struct.pack(">I", zlib.crc32(bytes(body))) if draw(st.booleans()) else data[-4:])


@settings(max_examples=200)
@given(st.lists(st.tuples(batches(), st.sampled_from([1000, 1001]), st.floats(0, 0.05)), max_size=40))
def test_fast_batches_are_indistinguishable(traffic: list[tuple[bytes, int, float]]) -> None:
    """Random sequences (repeated ids hit the cache, bursts hit the rate limit, a reload midway)."""
    fast, general = pair()
    now = 0.0
    for i, (data, port, step) in enumerate(traffic):
        now += step
        if i == len(traffic) // 2:
            for server in (fast, general):
                server.set_catalog(Catalog.from_prices(PRICES | {"apple": 51}))
        addr = ("127.0.0.1", port)
        assert fast.handle_datagram(data, addr, now) == general.handle_datagram(data, addr, now)
    assert fast.counters() == general.counters()


def test_plain_batches_never_reach_the_general_path() -> None:
    fast, _ = pair()
    fast.cache = None
    calls = 0
    original = fast.answer

    def counting(*args: object) -> object:
        nonlocal calls
        calls += 1
        return original(*args)  # type: ignore[arg-type]

    fast.answer = counting  # type: ignore[method-assign,assignment]
    lines = tuple((name, i + 1) for i, name in enumerate(sorted(PRICES)[:MAX_BATCH]))
    for i in range(10):
        assert fast.handle_datagram(encode_batch_request(BatchRequest(i, lines)), ("127.0.0.1", 1), i * 1.0)
    assert calls == 0
    fast.handle_datagram(encode_batch_request(BatchRequest(99, (*lines[:3], ("kiwi", 1)))), ("127.0.0.1", 1), 20.0)
    assert calls == 1, "a batch with an unknown item does"
