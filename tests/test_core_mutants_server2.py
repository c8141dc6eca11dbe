"""Tests written to kill mutants that survived scripts/mutate.sh in the server core (second file):
the fast paths answer every plain request themselves, at the limits too, and decline the rest
before counting anything; the reply cache replays a retransmission as first sent, per source and
request id, even across a reload; the counters operators read are exact on every path."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

import pytest
from mutantlib import reseal

from udp_price.auth import ClientAuth, Key, ServerAuth
from udp_price.catalog import Catalog
from udp_price.server.core import QuoteServer
from udp_price.server.guards import ENTRY_OVERHEAD, NEWCOMER_BURSTS, RateLimiter, ReplyCache, Verdict
from udp_price.wire import (
    BatchRequest,
    ListRequest,
    QuoteRequest,
    Status,
    decode_any_reply,
    decode_batch_reply,
    decode_list_reply,
    decode_reply,
    encode_batch_request,
    encode_list_request,
    encode_request,
)
from udp_price.wire.framing import KIND_OFFSET
from wire_format import MAX_QUANTITY, MAX_TOTAL, VERSION

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


# ---------------------------------------------------------------- limits, keys and counters on the other paths

KEY = Key(1, b"k" * 32)
WALL = 1_800_000_000.0


def keyed(limiter: RateLimiter | None = None, cache: ReplyCache | None = None, anonymous: bool = False) -> QuoteServer:
    auth = ServerAuth({KEY.key_id: KEY}, allow_anonymous=anonymous, wall_offset_s=WALL)
    return QuoteServer(Catalog.from_prices(PRICES), limiter=limiter, cache=cache, auth=auth)


def test_a_keyed_server_counts_each_drop_and_never_raises_on_a_short_datagram() -> None:
    server = keyed()
    for size in range(KIND_OFFSET + 2):  # shorter than the kind byte, then the kind byte itself
        assert server.handle_datagram(bytes(size), ADDR, 0.0) is None
    client = ClientAuth(KEY)
    assert all(server.handle_datagram(client.sign(_quote(rid), WALL), ADDR, 0.0) for rid in (1, 2))
    assert server.counters() == {
        "requests": 7,
        "auth.dropped.anonymous": 5,
        "auth.verified": 2,
        "replies": 2,
        "status.OK": 2,
    }


def test_a_server_without_keys_counts_every_signed_request_it_drops() -> None:
    server = core()
    client = ClientAuth(KEY)
    assert [server.handle_datagram(client.sign(_quote(rid), WALL), ADDR, 0.0) for rid in (1, 2)] == [None, None]
    assert server.counters() == {"requests": 2, "auth.dropped.no_keys": 2, "refused.not_a_request": 2}


def test_signed_requests_pay_the_rate_limit_after_verification() -> None:
    server = keyed(limiter=RateLimiter(rate=1.0, burst=1.0, slip=0))
    client = ClientAuth(KEY)
    answered = [
        server.handle_datagram(client.sign(_quote(rid), WALL), ADDR, now) is not None
        for rid, now in [(1, 0.0), (2, 0.0), (3, 1.0)]
    ]
    assert answered == [True, False, True]
    assert server.counters()["rate_limited.dropped"] == 1 and server.counters()["auth.verified"] == 3


@pytest.mark.parametrize("make", [_quote, _batch, _unknown], ids=["quote", "batch", "unknown item"])
@pytest.mark.parametrize("fast", [True, False], ids=["fast path", "general path"])
def test_replies_to_signed_requests_never_enter_the_reply_cache(make: Make, fast: bool) -> None:
    """A signed request is never served from the cache (a byte-identical one is a replay, dropped;
    a retransmission is signed afresh), so its reply must not take the cache's memory."""
    cache = ReplyCache()
    server = keyed(cache=cache)
    server.fast_path = fast
    client = ClientAuth(KEY)
    for transmission in (1, 2):
        data = client.sign(make(1), WALL + transmission)
        assert server.handle_datagram(data, ADDR, float(transmission)) is not None
    assert len(cache) == 0 and cache.bytes == 0


def test_a_known_source_pays_its_own_bucket_for_junk_and_a_new_one_pays_nothing() -> None:
    """Unsealed bytes from a source the limiter knows cost that source a token (as before the
    newcomers' pool); from an unknown source they are dropped before the limiter sees them."""
    server = QuoteServer(Catalog.from_prices(PRICES), limiter=RateLimiter(rate=1.0, burst=2.0, slip=0))
    assert server.handle_datagram(_quote(1), ADDR, 0.0) is not None  # known now, 1 token left
    junk = b"QP" + bytes(74)
    assert server.handle_datagram(junk, ADDR, 0.0) is None  # pays the last token
    assert server.handle_datagram(_quote(2), ADDR, 0.0) is None, "no token left"
    newcomer = ("127.0.0.9", 40001)
    assert server.handle_datagram(junk, newcomer, 0.0) is None
    assert server.limiter is not None and not server.limiter.knows(newcomer[0])
    assert server.counters() == {
        "requests": 4,
        "replies": 1,
        "status.OK": 1,
        "malformed.bad_checksum": 2,
        "dropped": 1,  # the known source's junk went through the limiter and the general path
        "rate_limited.dropped": 1,
    }


def test_a_malformed_request_over_the_limit_gets_silence_not_an_error_reply() -> None:
    server = QuoteServer(Catalog.from_prices(PRICES), limiter=RateLimiter(rate=1.0, burst=1.0, slip=1))
    assert server.handle_datagram(_quote(1), ADDR, 0.0) is not None
    malformed = reseal(_quote(2), len(_quote(2)) - 5, b"\x01")  # a reserved byte set: MALFORMED when allowed
    assert server.handle_datagram(malformed, ADDR, 0.0) is None, "over the limit: only BUSY replies, to requests"
    assert server.counters()["dropped"] == 1 and server.counters()["malformed.reserved_not_zero"] == 1
    assert "rate_limited.busy" not in server.counters()


def test_our_version_undecodable_is_dropped_and_another_version_told_whatever_its_request_id() -> None:
    server = core()
    body = _quote(1)[:-4] + b"\0"  # our version, one byte too long: no request id to trust
    assert server.handle_datagram(body + struct.pack(">I", zlib.crc32(body)), ADDR, 0.0) is None
    other = reseal(_quote(VERSION), 2, bytes([VERSION + 1]))  # request id equal to our version number
    reply = decode_reply(server.handle_datagram(other, ADDR, 0.0) or b"")
    assert (reply.status, reply.request_id) == (Status.UNSUPPORTED_VERSION, VERSION)


def test_a_page_past_the_end_names_the_catalog_version() -> None:
    server = core()
    reply = decode_list_reply(server.handle_datagram(encode_list_request(ListRequest(4, 9)), ADDR, 0.0) or b"")
    assert (reply.status, reply.page, reply.pages, reply.catalog_version) == (
        Status.BAD_PAGE,
        9,
        1,
        server.catalog.version,
    )


def test_new_sources_refused_are_counted_exactly() -> None:
    """The newcomers' pool holds NEWCOMER_BURSTS full bursts: exactly that many new sources start
    at once (the last one on the pool's last token), the next ones are refused and counted."""
    server = QuoteServer(Catalog.from_prices(PRICES), limiter=RateLimiter(rate=2.0, burst=1.0, slip=0))
    sources = [(f"10.0.{n // 250}.{n % 250 + 1}", 40001) for n in range(NEWCOMER_BURSTS + 2)]
    answered = [server.handle_datagram(_quote(1), source, 0.0) is not None for source in sources]
    assert answered == [True] * NEWCOMER_BURSTS + [False, False]
    assert server.counters()["rate_limited.new_sources_refused"] == 2
    # One second later the pool has refilled at `rate`: two more new sources start, a third does not.
    later = [server.handle_datagram(_quote(1), (f"10.1.0.{n}", 40001), 1.0) is not None for n in (1, 2, 3)]
    assert later == [True, True, False]
    assert server.counters()["rate_limited.new_sources_refused"] == 3
    assert server.counters()["rate_limited.dropped"] == 3


# ---------------------------------------------------------------- the guards' documented edges


def test_the_least_recently_seen_source_is_forgotten_first() -> None:
    limiter = RateLimiter(max_sources=2)
    for source in ("10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.3"):
        limiter.check(source, 0.0)
    assert [limiter.knows(s) for s in ("10.0.0.1", "10.0.0.2", "10.0.0.3")] == [True, False, True]


def test_near_the_limit_means_less_than_the_near_fraction_of_a_burst() -> None:
    limiter = RateLimiter(rate=1.0, burst=10.0, near_fraction=0.1)  # near: under 1 token of 10
    near = []
    for _ in range(11):
        limiter.check("10.0.0.1", 0.0)
        near.append(limiter.near_limit)
    assert near == [False] * 10 + [True], "the 10th request finds exactly 1 token: not yet near"


def test_retry_after_counts_the_missing_part_of_a_token_at_least_one_millisecond() -> None:
    limiter = RateLimiter(rate=4.0, burst=1.0, slip=1)
    assert limiter.check("10.0.0.1", 0.0) is Verdict.ALLOW
    assert limiter.check("10.0.0.1", 0.125) is Verdict.SLIP  # half a token back: 0.5 / 4 per s = 125 ms
    assert limiter.retry_after_ms("10.0.0.1") == 125
    fast = RateLimiter(rate=1024.0, burst=1.0, slip=1)
    assert fast.check("10.0.0.1", 0.0) is Verdict.ALLOW
    assert fast.check("10.0.0.1", 2**-11) is Verdict.SLIP  # half a token missing: 0.49 ms
    assert fast.retry_after_ms("10.0.0.1") == 1


def test_a_cache_smaller_than_one_entry_keeps_the_latest_reply_and_no_more() -> None:
    tiny = ReplyCache(max_bytes=100)
    tiny.put(("a", 1, 1), b"req", b"x" * 200, 0.0)
    assert tiny.get(("a", 1, 1), b"req", 0.0) == b"x" * 200, "the latest reply stays, whatever its size"
    small = ReplyCache(max_bytes=ENTRY_OVERHEAD + 15)  # room for one entry of a 10-byte reply
    for n in range(3):
        small.put(("a", 1, n), b"req", b"y" * 10, 0.0)
    assert len(small) == 1 and small.bytes <= small.max_bytes and small.evictions == 2
    assert small.get(("a", 1, 2), b"req", 0.0) == b"y" * 10


def test_every_64th_put_sweeps_out_what_is_older_than_max_age() -> None:
    """Old entries leave memory at the latest on the 64th put after they expire; an entry exactly
    max_age old is still fresh (get serves it), so the sweep keeps it too."""
    cache = ReplyCache(max_age_s=1.0)
    for n in range(63):
        cache.put(("a", 1, n), b"req", b"r", 0.0)
    cache.put(("a", 1, 63), b"req", b"r", 1.0)  # the 64th put: everything is exactly 1 s old at most
    assert len(cache) == 64 and cache.evictions == 0
    for n in range(64, 127):
        cache.put(("a", 1, n), b"req", b"r", 1.0)
    cache.put(("a", 1, 127), b"req", b"r", 2.5)  # the 128th: all but itself older than 1 s
    assert len(cache) == 1 and cache.evictions == 127 and cache.bytes == ENTRY_OVERHEAD + 1


def test_the_sweep_of_a_full_cache_keeps_max_entries_young_entries() -> None:
    cache = ReplyCache(max_entries=10)
    for n in range(64):
        cache.put(("a", 1, n), b"req", b"r", 0.0)
    assert len(cache) == 10 and cache.evictions == 54


def test_another_versions_short_request_is_not_answered_with_a_longer_reply() -> None:
    """Another version may have shorter requests; the UNSUPPORTED_VERSION reply (76 bytes for a
    quote) to one shorter than that would amplify: dropped, and counted each time."""
    server = core()
    short = b"QP" + bytes([VERSION + 1, 1]) + (7).to_bytes(8, "big") + bytes(8)
    short += struct.pack(">I", zlib.crc32(short))
    assert [server.handle_datagram(short, ADDR, 0.0) for _ in range(2)] == [None, None]
    assert server.counters() == {"requests": 2, "malformed.bad_length": 2, "dropped.amplification": 2}
