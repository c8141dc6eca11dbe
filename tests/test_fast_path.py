"""The server's fast path for plain quotes against its general path: same bytes, same counters."""

from __future__ import annotations

import struct
import zlib

from helpers import expected_prices
from hypothesis import given, settings
from hypothesis import strategies as st

from udp_price.catalog import Catalog
from udp_price.server.core import QuoteServer
from udp_price.server.guards import RateLimiter, ReplyCache
from udp_price.wire import QuoteRequest, encode_request
from wire_format import MAX_QUANTITY

PRICES = expected_prices() | {"yacht": 10**15}
NAMES = [*sorted(PRICES), "kiwi", "café crème", "cafe\u0301 cre\u0300me"]


def pair() -> tuple[QuoteServer, QuoteServer]:
    def make(fast: bool) -> QuoteServer:
        return QuoteServer(
            Catalog.from_prices(PRICES), limiter=RateLimiter(rate=50, burst=20), cache=ReplyCache(), fast_path=fast
        )

    return make(True), make(False)


quantities = st.one_of(st.integers(0, 3), st.integers(MAX_QUANTITY - 1, MAX_QUANTITY + 1), st.integers(0, 2**32 - 1))


@st.composite
def datagrams(draw: st.DrawFn) -> bytes:
    data = encode_request(QuoteRequest(draw(st.integers(0, 5)), draw(st.sampled_from(NAMES)), draw(quantities)))
    if draw(st.booleans()):
        return data
    body = bytearray(data[:-4])
    body[draw(st.integers(0, len(body) - 1))] = draw(st.integers(0, 255))
    return bytes(body) + (struct.pack(">I", zlib.crc32(bytes(body))) if draw(st.booleans()) else data[-4:])


@settings(max_examples=2 * settings().max_examples)
@given(st.lists(st.tuples(datagrams(), st.sampled_from([1000, 1001]), st.floats(0, 0.05)), max_size=40))
def test_fast_path_is_indistinguishable(traffic: list[tuple[bytes, int, float]]) -> None:
    """Random sequences (repeated ids hit the cache, bursts hit the rate limit, a reload midway):
    the fast server answers exactly as the general one, byte for byte, counter for counter."""
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


def test_fast_path_really_serves_the_common_case() -> None:
    fast, _ = pair()
    fast.cache = None
    calls = 0
    original = fast.answer

    def counting(*args: object) -> object:
        nonlocal calls
        calls += 1
        return original(*args)  # type: ignore[arg-type]

    fast.answer = counting  # type: ignore[method-assign,assignment]
    for i in range(10):
        assert fast.handle_datagram(encode_request(QuoteRequest(i, "apple", 2)), ("127.0.0.1", 1), i * 1.0)
    assert calls == 0, "plain quotes for known items never reach the general path"
    fast.handle_datagram(encode_request(QuoteRequest(99, "kiwi", 2)), ("127.0.0.1", 1), 20.0)
    assert calls == 1, "an unknown item does"
