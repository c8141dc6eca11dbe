"""Tests written to kill mutants that survived scripts/mutate.sh in the server core (second file):
the fast paths answer every plain request themselves, at the limits too, and decline the rest
before counting anything; the reply cache replays a retransmission as first sent, per source and
request id, even across a reload; the counters operators read are exact on every path."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from udp_price.catalog import Catalog
from udp_price.server.core import QuoteServer
from udp_price.server.guards import ReplyCache
from udp_price.wire import (
    BatchRequest,
    QuoteRequest,
    Status,
    decode_any_reply,
    decode_batch_reply,
    decode_reply,
    encode_batch_request,
    encode_request,
)
from wire_format import MAX_QUANTITY, MAX_TOTAL

EXACT_UNIT, EXACT_QTY = 42_128_471_623, 218_934_409  # product: MAX_TOTAL exactly (tests/test_money_limits.py)
POW_UNIT, POW_QTY = 2**40, 2**23  # product: MAX_TOTAL + 1
PRICES = {"apple": 50, "pear": 55, "exact": EXACT_UNIT, "pow": POW_UNIT}
ADDR = ("127.0.0.1", 40001)

Make = Callable[[int], bytes]


def _quote(rid: int) -> bytes:
    return encode_request(QuoteRequest(rid, "apple", 3, transmission=1))


def _batch(rid: int) -> bytes:
    return encode_batch_request(BatchRequest(rid, (("apple", 3), ("pear", 2)), transmission=1))


def _unknown(rid: int) -> bytes:
    return encode_request(QuoteRequest(rid, "plum", 3, transmission=1))


def core(fast: bool = True, cache: ReplyCache | None = None) -> QuoteServer:
    return QuoteServer(Catalog.from_prices(PRICES), cache=cache, fast_path=fast)


def general_path_forbidden(server: QuoteServer) -> QuoteServer:
    """``server`` whose general path raises: what it still answers, a fast path answered."""

    def refuse(*args: object) -> object:
        raise AssertionError("the general path answered a request the fast path must answer")

    server.answer = refuse  # type: ignore[method-assign,assignment]
    return server


# ---------------------------------------------------------------- the fast paths answer at the limits

AT_THE_LIMITS = [("exact", EXACT_QTY, MAX_TOTAL), ("apple", MAX_QUANTITY, 50 * MAX_QUANTITY), ("pear", 1, 55)]


@pytest.mark.parametrize(("item", "quantity", "total"), AT_THE_LIMITS)
def test_the_quote_fast_path_answers_up_to_max_total_and_max_quantity(item: str, quantity: int, total: int) -> None:
    fast = general_path_forbidden(core())
    data = encode_request(QuoteRequest(7, item, quantity, transmission=3))
    out = fast.handle_datagram(data, ADDR, 0.0)
    assert out is not None and out == core(fast=False).handle_datagram(data, ADDR, 0.0)
    reply = decode_reply(out)
    assert (reply.status, reply.unit_price, reply.total, reply.transmission) == (Status.OK, PRICES[item], total, 3)
    assert fast.counters() == {"requests": 1, "replies": 1, "status.OK": 1}


def test_the_batch_fast_path_answers_a_batch_at_the_limits_exactly_as_the_general_path() -> None:
    fast, general = general_path_forbidden(core()), core(fast=False)
    data = encode_batch_request(BatchRequest(9, tuple((i, q) for i, q, _ in AT_THE_LIMITS), transmission=2))
    out = fast.handle_datagram(data, ADDR, 0.0)
    assert out is not None and out == general.handle_datagram(data, ADDR, 0.0)
    reply = decode_batch_reply(out)
    assert [(r.status, r.unit_price, r.total) for r in reply.results] == [
        (Status.OK, PRICES[i], t) for i, _, t in AT_THE_LIMITS
    ]
    assert (reply.request_id, reply.transmission, reply.catalog_version) == (9, 2, fast.catalog.version)
    assert fast.counters() == general.counters() == {"requests": 1, "replies": 1, "status.OK": 1, "batch_lines": 3}


# One line the fast paths must hand to the general path, and the status the reply gives it.
DECLINED = [
    ("plum", 1, Status.UNKNOWN_ITEM),
    ("apple", 0, Status.BAD_QUANTITY),
    ("apple", MAX_QUANTITY + 1, Status.BAD_QUANTITY),
    ("pow", POW_QTY, Status.OVERFLOW),
    ("exact", EXACT_QTY + 1, Status.OVERFLOW),
]


@pytest.mark.parametrize(("item", "quantity", "status"), DECLINED)
def test_the_fast_paths_decline_what_is_not_plain_before_counting_anything(
    item: str, quantity: int, status: Status
) -> None:
    """A declined request counts nothing on the fast path (the general path then counts it once)
    and gets from the general path exactly the reply a server without fast path sends."""
    fast, general = core(cache=ReplyCache()), core(fast=False, cache=ReplyCache())
    quote = encode_request(QuoteRequest(7, item, quantity, transmission=1))
    batch = encode_batch_request(BatchRequest(8, (("apple", 1), (item, quantity)), transmission=1))
    assert fast.quote_fast(quote, ADDR, 0.0) is None and fast.batch_fast(batch, ADDR, 0.0) is None
    assert fast.counters() == {"cache_evictions": 0} and len(fast.cache or ()) == 0
    assert fast.handle_datagram(quote, ADDR, 0.0) == general.handle_datagram(quote, ADDR, 0.0)
    out = fast.handle_datagram(batch, ADDR, 0.0)
    assert out is not None and out == general.handle_datagram(batch, ADDR, 0.0)
    assert [r.status for r in decode_batch_reply(out).results] == [Status.OK, status]
    assert fast.counters() == general.counters()
    assert fast.counters() == {
        "requests": 2,
        "replies": 2,
        f"status.{status.name}": 1,  # the quote's reply
        "status.OK": 1,  # the batch's: its second line carries the line's status
        "batch_lines": 2,
        "cache_evictions": 0,
    }


def test_the_fast_paths_decline_the_other_kinds() -> None:
    fast = core()
    assert fast.quote_fast(_batch(1), ADDR, 0.0) is None and fast.batch_fast(_quote(1), ADDR, 0.0) is None
    assert fast.counters() == {}


# ---------------------------------------------------------------- the reply cache, per source and request id

PATHS: dict[str, tuple[Make, bool]] = {
    "quote, fast path": (_quote, True),
    "quote, general path": (_quote, False),
    "batch, fast path": (_batch, True),
    "batch, general path": (_batch, False),
    "unknown item": (_unknown, True),
}


@pytest.mark.parametrize("path", list(PATHS))
def test_a_retransmission_gets_its_first_reply_after_a_reload_and_nobody_else_does(path: str) -> None:
    """The reply cache's promise (udp_price.server.guards.ReplyCache): a retransmission gets byte
    for byte the reply the first transmission got, even if the catalog was reloaded in between;
    the same bytes from another source (address or port) are a new request, answered afresh."""
    make, fast = PATHS[path]
    server = core(fast=fast, cache=ReplyCache())
    first = {rid: server.handle_datagram(make(rid), ADDR, 0.0) for rid in (1, 2)}
    assert None not in first.values() and first[1] != first[2]
    server.set_catalog(Catalog.from_prices(PRICES | {"apple": 51, "pear": 56}))
    assert [server.handle_datagram(make(rid), ADDR, 1.0) for rid in (1, 2, 1)] == [first[1], first[2], first[1]]
    version = server.catalog.version
    for other in (("127.0.0.1", 40002), ("127.0.0.2", 40001)):
        fresh = server.handle_datagram(make(1), other, 1.0)
        assert fresh is not None and fresh != first[1]
        assert decode_any_reply(fresh).catalog_version == version
    counters = server.counters()
    assert counters["cache_hits"] == 3 and counters["replies"] == 7 and counters["requests"] == 7
    if make is _batch:
        assert counters["batch_lines"] == 2 * 4, "lines of the 4 batches answered, not of the 3 replays"


@pytest.mark.parametrize("fast", [True, False], ids=["fast path", "general path"])
def test_an_expired_entry_is_answered_afresh(fast: bool) -> None:
    for make in (_quote, _batch):
        server = core(fast=fast, cache=ReplyCache(max_age_s=5.0))
        first = server.handle_datagram(make(1), ADDR, 0.0)
        server.set_catalog(Catalog.from_prices(PRICES | {"apple": 51}))
        assert server.handle_datagram(make(1), ADDR, 5.0) == first, "5 s old: still the first reply"
        later = server.handle_datagram(make(1), ADDR, 5.5)
        assert later is not None and later != first and server.counters()["cache_hits"] == 1
