"""Tests written to kill mutants that survived scripts/mutate.sh in the server core and the catalog:
error and busy replies of every kind, counters, catalog files, versions and parse errors."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from mutantlib import BATCH_REQUEST, LIST_REQUEST, QUOTE_REQUEST, Decoder, reseal

from udp_price.catalog import (
    Catalog,
    format_money,
    load_catalog,
    parse_catalog,
    parse_catalog_bytes,
    parse_catalog_exactly,
    parse_price,
    read_catalog_file,
)
from udp_price.errors import CatalogError
from udp_price.server.core import QuoteServer
from udp_price.server.guards import RateLimiter, ReplyCache
from udp_price.wire import (
    BatchReply,
    ListReply,
    QuoteReply,
    Status,
    decode_batch_reply,
    decode_list_reply,
    decode_reply,
    encode_batch_request,
    encode_list_request,
    encode_request,
    lines_digest,
    split_overload_mark,
)

# ---------------------------------------------------------------- the server core's error and busy replies
from udp_price.wire.framing import REPLY_STATUS_OFFSET

CORE_ADDR = ("127.0.0.1", 40001)
DATA = bytes(range(76))


def core_with(limiter: RateLimiter | None = None, cache: ReplyCache | None = None) -> QuoteServer:
    return QuoteServer(Catalog.from_prices({"apple": 50, "apricot": 120, "pear": 55}), limiter=limiter, cache=cache)


def _marked(reply: bytes | None) -> bytes:
    """``reply`` without its OVERLOADED mark, which it must carry (a BUSY reply goes to a source
    at its rate limit, so the core marks it as it encodes it)."""
    plain, marked = split_overload_mark(reply or b"")
    assert marked, "a BUSY reply carries the OVERLOADED mark"
    return plain


def test_busy_replies_of_every_kind_carry_what_binds_them_to_the_request() -> None:
    core = core_with(limiter=RateLimiter(rate=1, burst=1, slip=1))
    version = core.catalog.version
    assert core.handle_datagram(encode_request(QUOTE_REQUEST), CORE_ADDR, 0.0) is not None  # the one token
    quote = decode_reply(_marked(core.handle_datagram(encode_request(QUOTE_REQUEST), CORE_ADDR, 0.0)))
    assert quote == QuoteReply(1, Status.BUSY, "apple", 3, 0, 0, version, 1000, 2)
    batch_data = encode_batch_request(BATCH_REQUEST)
    batch = decode_batch_reply(_marked(core.handle_datagram(batch_data, CORE_ADDR, 0.0)))
    assert batch == BatchReply(1, Status.BUSY, lines_digest(batch_data), (), version, 2000, 2)
    listed = decode_list_reply(_marked(core.handle_datagram(encode_list_request(LIST_REQUEST), CORE_ADDR, 0.0)))
    assert listed == ListReply(1, Status.BUSY, 3, 0, (), version)
    assert core.stats["rate_limited.busy"] == 3 and core.stats["overload.marked"] == 3


def test_error_replies_of_every_kind_name_the_request_and_the_catalog() -> None:
    core = core_with()
    version = core.catalog.version
    batch_data = reseal(encode_batch_request(BATCH_REQUEST), 14, b"\x00\x01")  # reserved bytes set
    batch = decode_batch_reply(core.handle_datagram(batch_data, CORE_ADDR, 0.0) or b"")
    assert batch == BatchReply(1, Status.MALFORMED, lines_digest(batch_data), (), version)
    list_data = encode_list_request(LIST_REQUEST)
    list_data = reseal(list_data, len(list_data) - 5, b"\x01")
    assert decode_list_reply(core.handle_datagram(list_data, CORE_ADDR, 0.0) or b"") == ListReply(
        1, Status.MALFORMED, 0, 0, (), version
    )
    quote_data = reseal(encode_request(QUOTE_REQUEST), len(encode_request(QUOTE_REQUEST)) - 5, b"\x01")
    assert decode_reply(core.handle_datagram(quote_data, CORE_ADDR, 0.0) or b"") == QuoteReply(
        1, Status.MALFORMED, "", 0, 0, 0, version
    )


@pytest.mark.parametrize(
    ("make", "decode", "empty"),
    [
        (lambda: encode_request(QUOTE_REQUEST), decode_reply, QuoteReply(1, Status.UNSUPPORTED_VERSION, "", 0)),
        (lambda: encode_batch_request(BATCH_REQUEST), decode_batch_reply, None),
        (lambda: encode_list_request(LIST_REQUEST), decode_list_reply, ListReply(1, Status.UNSUPPORTED_VERSION, 0, 0)),
    ],
)
def test_another_version_is_told_so_in_our_version(make: Callable[[], bytes], decode: Decoder, empty: Any) -> None:
    core = core_with()
    other = reseal(make(), 2, b"\x07")
    reply = decode(core.handle_datagram(other, CORE_ADDR, 0.0) or b"")
    assert reply.status is Status.UNSUPPORTED_VERSION and reply.request_id == 1
    assert reply.catalog_version == core.catalog.version
    if empty is not None:
        assert replace(reply, catalog_version=0) == empty
    # A datagram of our version whose version byte was flipped in transit fails its CRC: silence.
    flipped = bytearray(make())
    flipped[2] = 7
    assert core.handle_datagram(bytes(flipped), CORE_ADDR, 0.0) is None


def test_counters_include_the_guards() -> None:
    core = core_with(limiter=RateLimiter(rate=1, burst=1, slip=0), cache=ReplyCache(max_entries=1))
    assert "cache_evictions" in core.counters() and core.counters()["cache_evictions"] == 0
    answered = [
        core.handle_datagram(encode_request(replace(QUOTE_REQUEST, request_id=rid)), CORE_ADDR, 0.0) is not None
        for rid in range(3)
    ]
    assert answered == [True, False, False], "a burst of 1: the limiter passes one, drops two"
    assert core.counters() == {
        "requests": 3,
        "replies": 1,
        "status.OK": 1,
        "rate_limited.dropped": 2,
        "cache_evictions": 0,  # one reply, one entry: nothing evicted (test_review20_server counts evictions)
    }
    assert core_with().counters() == {}
    assert core.summary().split() == sorted(core.summary().split())


def test_reply_cache_replacing_an_entry_keeps_the_byte_count_exact() -> None:
    cache = ReplyCache(max_entries=4)
    cache.put(("a", 1, 1), b"req", b"x" * 10, 0.0)
    before = cache._bytes
    cache.put(("a", 1, 1), b"req", b"y" * 30, 0.0)
    assert cache._bytes == before + 20
    assert cache.get(("a", 1, 1), b"req", 0.0) == b"y" * 30
    cache.put(("b", 1, 1), b"req", b"z", 0.0)
    cache.put(("a", 1, 1), b"req", b"w", 0.0)  # replaced: now the youngest, so "b" goes first
    for n in range(3):
        cache.put(("c", n, 1), b"req", b"v", 0.0)
    assert cache.get(("b", 1, 1), b"req", 0.0) is None and cache.get(("a", 1, 1), b"req", 0.0) == b"w"


# ---------------------------------------------------------------- catalog files and versions


def test_a_catalog_too_big_for_the_wire_has_a_content_version_and_is_refused_by_the_server() -> None:
    prices = {"b": 2**64, "a": 5}
    catalog = Catalog.from_prices(prices)
    canonical = b"a".ljust(32, b"\0") + b"b".ljust(32, b"\0") + b"5\n" + str(2**64).encode() + b"\n"
    assert catalog.version == int.from_bytes(hashlib.blake2b(canonical, digest_size=4).digest(), "big")
    assert dict(catalog.prices) == prices
    assert Catalog.from_prices({"a": 5, "b": 2**64 + 1}).version != catalog.version
    with pytest.raises(ValueError, match=r"1 price\(s\) do not fit the 64-bit price field, e.g. 'b'"):
        QuoteServer(catalog)


def test_read_catalog_file_reads_exactly_up_to_its_limit(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_bytes(b"item,price\napple,0.50\n")
    st, raw = read_catalog_file(path, limit=22)
    assert raw == b"item,price\napple,0.50\n" and st.st_size == 22 and st.st_ino == path.stat().st_ino
    with pytest.raises(CatalogError) as info:
        read_catalog_file(path, limit=21)
    assert info.value.problems == ["22 bytes; a catalog file may have at most 21"]
    assert info.value.path == str(path)
    assert load_catalog(path).prices == {"apple": 50}


def test_read_catalog_file_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    folder = tmp_path / "dir"
    folder.mkdir()
    cases = {fifo: "a FIFO", folder: "a directory", Path("/dev/null"): "a character device"}
    for where, kind in cases.items():
        with pytest.raises(CatalogError) as info:
            read_catalog_file(where)  # a FIFO must be refused, not block until a writer comes
        assert info.value.problems == [f"not a regular file ({kind}); a catalog must be one"]
    with pytest.raises(CatalogError) as info:
        read_catalog_file(tmp_path / "missing.csv")
    assert info.value.problems == ["cannot read: No such file or directory"]


def test_bad_catalog_bytes_and_text_are_named() -> None:
    with pytest.raises(CatalogError) as info:
        parse_catalog_bytes(b"item,price\napple,\xff\n", "x.csv")
    assert info.value.path == "x.csv" and info.value.problems[0].startswith("cannot read: 'utf-8' codec")
    assert parse_catalog_bytes("\ufeffitem,price\napple,0.50\n".encode()).prices == {"apple": 50}
    with pytest.raises(CatalogError) as info:
        parse_catalog_exactly("", "e.csv")
    assert info.value.problems == ["line 1: file is empty; expected a header 'item,price'"]
    assert info.value.path == "e.csv"
    for header in ("item,cost", "name,price"):
        with pytest.raises(CatalogError) as info:
            parse_catalog_exactly(f"{header}\napple,1\n", "h.csv")
        assert info.value.path == "h.csv" and "header must name 'item' and 'price'" in info.value.problems[0]
    with pytest.raises(CatalogError) as info:
        parse_catalog_exactly("name,cost\napple,1\n")
    assert info.value.problems == ["line 1: header must name 'item' and 'price' columns, got ['name', 'cost']"]
    with pytest.raises(CatalogError) as info:
        parse_catalog_exactly("item,price\n\n  ,  \n")
    assert info.value.problems == ["no items: the catalog must list at least one"]
    text = 'item,price\r\napple,0.50\r\n"pe\r\nar",1\r\n'
    assert parse_catalog_exactly(text).prices == {"apple": 50, "pe\r\nar": 100}
    assert parse_catalog_exactly(" Price , ITEM \n1.25,apple\n").prices == {"apple": 125}


def test_a_catalog_with_many_problems_lists_the_first_hundred_and_counts_the_rest() -> None:
    text = "item,price\n" + "".join(f"i{n},-1\n" for n in range(105))
    with pytest.raises(CatalogError) as info:
        parse_catalog(text)
    problems = info.value.problems
    assert len(problems) == 101 and problems[0].startswith("line 2: ") and problems[99].startswith("line 101: ")
    assert problems[100] == "... and 5 more problem(s), 105 in all (only the first are listed)"
    with pytest.raises(CatalogError) as info:
        parse_catalog("item,price\n" + "".join(f"i{n},-1\n" for n in range(100)))
    assert len(info.value.problems) == 100


def test_money_text() -> None:
    assert [format_money(v) for v in (0, 7, 1250, -1250, -7)] == ["0.00", "0.07", "12.50", "-12.50", "-0.07"]
    assert [parse_price(t) for t in ("0", " 1.5 ", "0.07", "12")] == [0, 150, 7, 1200]
    for bad, why in [
        ("", "price is empty"),
        ("1.234", "price '1.234' has more than 2 decimals"),
        ("-1", "price '-1' is negative"),
        ("1e3", "price '1e3' is not a decimal number like 12.50"),
        ("x" * 50, "price 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx... is not"),
    ]:
        with pytest.raises(ValueError) as info:
            parse_price(bad)
        assert why in str(info.value)


def test_every_datagram_and_reply_is_counted_exactly() -> None:
    """The counters are what operators alert on (docs/operations.md): each is exact, not 'nonzero'."""
    core = core_with(limiter=RateLimiter(rate=1, burst=2, slip=0), cache=ReplyCache())
    request = encode_request(QUOTE_REQUEST)
    replies = [core.handle_datagram(request, CORE_ADDR, 0.0) for _ in range(4)]
    assert [r is not None for r in replies] == [True, True, False, False], "two tokens, then silence (slip 0)"
    assert replies[0] == replies[1], "the second is the cached reply"
    assert core.counters() == {
        "requests": 4,
        "replies": 2,
        "status.OK": 2,
        "cache_hits": 1,
        "rate_limited.dropped": 2,
        "cache_evictions": 0,
    }


def test_cache_hits_on_the_fast_path_are_counted_each_time() -> None:
    core = core_with(cache=ReplyCache())
    request = encode_request(QUOTE_REQUEST)
    first = core.handle_datagram(request, CORE_ADDR, 0.0)
    assert [core.handle_datagram(request, CORE_ADDR, 0.0) for _ in range(2)] == [first, first]
    assert core.counters()["cache_hits"] == 2


def test_the_last_check_drops_an_amplifying_reply_and_counts_unknown_statuses() -> None:
    core = core_with()
    assert core._checked(bytes(10), bytes(11)) is None
    assert core._checked(bytes(10), None) is None
    unknown = bytearray(76)
    unknown[REPLY_STATUS_OFFSET] = 200
    assert core._checked(bytes(76), bytes(unknown)) == bytes(unknown)
    assert core._checked(bytes(76), bytes(76)) == bytes(76)
    assert core.counters() == {"dropped.amplification": 1, "replies": 2, "status.unknown": 1, "status.OK": 1}


# ---------------------------------------------------------------- the guards at their edges


@pytest.mark.parametrize(
    "settings",
    [{"rate": 0.0}, {"burst": 0.5}, {"slip": -1}, {"max_sources": 0}],
)
def test_rate_limiter_refuses_each_bad_setting_alone(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"^rate > 0, burst >= 1, slip >= 0 and max_sources >= 1 are required$"):
        RateLimiter(**settings)


def test_rate_limiter_at_its_limits_and_retry_after() -> None:
    tiny = RateLimiter(rate=1000.0, burst=1.0, slip=0, max_sources=1)
    assert tiny.retry_after_ms("10.0.0.1") == 1, "an unknown source: the minimum"
    assert len(tiny) == 0


def test_reply_cache_keeps_a_reply_exactly_max_age() -> None:
    cache = ReplyCache(max_age_s=1.0)
    cache.put(("10.0.0.1", 1, 7), b"request", b"reply", 10.0)
    assert cache.get(("10.0.0.1", 1, 7), b"request", 11.0) == b"reply", "1 s old: still fresh"
    assert cache.get(("10.0.0.1", 1, 7), b"request", 11.5) is None
    assert len(cache.digest(b"request")) == 16
    assert cache.digest(b"request") != ReplyCache().digest(b"request"), "keyed per cache: not predictable"
