"""Tests written to kill mutants that survived scripts/mutate.sh: every numeric field's range at
both ends in every encoder, decoders' reasons for each defect, the list messages' round trips."""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

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
from udp_price.client.recovery import RetryBudget
from udp_price.client.reply_checks import line_violation, violation
from udp_price.errors import CatalogError
from udp_price.faults.plan import (
    ChannelState,
    Direction,
    FaultPlan,
    Faults,
    LinkState,
    decide_step,
    gemodel_step,
    gilbert_step,
    shape,
)
from udp_price.server.core import QuoteServer
from udp_price.server.guards import RateLimiter, ReplyCache
from udp_price.wire import (
    BadItem,
    BadQuantity,
    BatchReply,
    BatchRequest,
    EncodeError,
    LineResult,
    ListReply,
    ListRequest,
    MalformedDatagram,
    QuoteReply,
    QuoteRequest,
    Status,
    decode_any_reply,
    decode_any_request,
    decode_batch_reply,
    decode_batch_request,
    decode_list_reply,
    decode_list_request,
    decode_reply,
    decode_request,
    encode_batch_reply,
    encode_batch_request,
    encode_list_reply,
    encode_list_request,
    encode_reply,
    encode_request,
    lines_digest,
    parse_quantity,
    split_overload_mark,
)
from udp_price.wire.items import check_quantity, decode_prefix, encode_prefix, normalize_prefix
from wire_format import MAX_QUANTITY, PREFIX_SIZE

QUOTE_REQUEST = QuoteRequest(1, "apple", 3, transmission=2)
QUOTE_REPLY = QuoteReply(1, Status.OK, "apple", 3, 50, 150, 7, 0, 2)
BATCH_REQUEST = BatchRequest(1, (("apple", 3), ("pear", 2)), transmission=2)
BATCH_REPLY = BatchReply(1, Status.OK, 99, (LineResult(Status.OK, 50, 150), LineResult(Status.OK, 55, 110)), 7, 0, 2)
LIST_REQUEST = ListRequest(1, 3, "ap")
LIST_REPLY = ListReply(1, Status.OK, 3, 5, (("apple", 50), ("apricot", 120)), 7)

Encoder = Callable[[Any], bytes]
Decoder = Callable[[bytes], Any]
MESSAGES: list[tuple[Any, Encoder, Decoder]] = [
    (QUOTE_REQUEST, encode_request, decode_request),
    (QUOTE_REPLY, encode_reply, decode_reply),
    (BATCH_REQUEST, encode_batch_request, decode_batch_request),
    (BATCH_REPLY, encode_batch_reply, decode_batch_reply),
    (LIST_REQUEST, encode_list_request, decode_list_request),
    (LIST_REPLY, encode_list_reply, decode_list_reply),
]
# (message, encoder, decoder, field, bits): every unsigned field a caller sets.
FIELDS = [
    (QUOTE_REQUEST, encode_request, decode_request, "request_id", 64),
    (QUOTE_REQUEST, encode_request, decode_request, "quantity", 32),
    (QUOTE_REQUEST, encode_request, decode_request, "transmission", 8),
    (QUOTE_REPLY, encode_reply, decode_reply, "request_id", 64),
    (QUOTE_REPLY, encode_reply, decode_reply, "transmission", 8),
    (QUOTE_REPLY, encode_reply, decode_reply, "retry_after_ms", 16),
    (QUOTE_REPLY, encode_reply, decode_reply, "quantity", 32),
    (QUOTE_REPLY, encode_reply, decode_reply, "unit_price", 64),
    (QUOTE_REPLY, encode_reply, decode_reply, "total", 64),
    (QUOTE_REPLY, encode_reply, decode_reply, "catalog_version", 32),
    (BATCH_REQUEST, encode_batch_request, decode_batch_request, "request_id", 64),
    (BATCH_REQUEST, encode_batch_request, decode_batch_request, "transmission", 8),
    (BATCH_REPLY, encode_batch_reply, decode_batch_reply, "request_id", 64),
    (BATCH_REPLY, encode_batch_reply, decode_batch_reply, "catalog_version", 32),
    (BATCH_REPLY, encode_batch_reply, decode_batch_reply, "lines_digest", 32),
    (BATCH_REPLY, encode_batch_reply, decode_batch_reply, "retry_after_ms", 16),
    (BATCH_REPLY, encode_batch_reply, decode_batch_reply, "transmission", 8),
    (LIST_REQUEST, encode_list_request, decode_list_request, "request_id", 64),
    (LIST_REQUEST, encode_list_request, decode_list_request, "page", 32),
    (LIST_REPLY, encode_list_reply, decode_list_reply, "request_id", 64),
    (LIST_REPLY, encode_list_reply, decode_list_reply, "page", 32),
    (LIST_REPLY, encode_list_reply, decode_list_reply, "pages", 32),
    (LIST_REPLY, encode_list_reply, decode_list_reply, "catalog_version", 32),
]


@pytest.mark.parametrize(("message", "encode", "decode", "field", "bits"), FIELDS, ids=lambda v: str(v)[:30])
def test_every_field_takes_its_whole_range_and_names_itself_past_it(
    message: Any, encode: Encoder, decode: Decoder, field: str, bits: int
) -> None:
    for value in (0, 2**bits - 1):
        at_edge = replace(message, **{field: value})
        assert decode(encode(at_edge)) == at_edge
    for value in (2**bits, -1):
        with pytest.raises(EncodeError, match=f"^{field}={value} does not fit in an unsigned {bits}-bit field$"):
            encode(replace(message, **{field: value}))


@pytest.mark.parametrize("field", ["unit_price", "total"])
def test_batch_result_fields_take_their_whole_range(field: str) -> None:
    def with_line(value: int) -> BatchReply:
        changes: dict[str, Any] = {field: value}
        return replace(BATCH_REPLY, results=(replace(BATCH_REPLY.results[0], **changes),))

    edge = with_line(2**64 - 1)
    assert decode_batch_reply(encode_batch_reply(edge)) == edge
    for value in (2**64, -1):
        bad = with_line(value)
        with pytest.raises(EncodeError, match=f"^{field}={value} does not fit"):
            encode_batch_reply(bad)


def test_batch_line_quantity_takes_its_whole_range() -> None:
    edge = BatchRequest(1, (("apple", 2**32 - 1), ("pear", 0)))
    assert decode_batch_request(encode_batch_request(edge)) == edge
    with pytest.raises(EncodeError, match=r"^quantity=4294967296 does not fit"):
        encode_batch_request(BatchRequest(1, (("apple", 2**32),)))


@pytest.mark.parametrize(("message", "encode", "decode"), MESSAGES, ids=lambda v: type(v).__name__)
def test_every_kind_round_trips_and_any_decoder_routes_it(message: Any, encode: Encoder, decode: Decoder) -> None:
    data = encode(message)
    assert decode(data) == message
    route = decode_any_request if "Request" in type(message).__name__ else decode_any_reply
    assert route(data) == message


def test_batch_and_list_replies_are_at_most_full_size() -> None:
    with pytest.raises(EncodeError, match="at most 32 results"):
        encode_batch_reply(replace(BATCH_REPLY, results=BATCH_REPLY.results[:1] * 33))
    assert (
        len(decode_batch_reply(encode_batch_reply(replace(BATCH_REPLY, results=BATCH_REPLY.results[:1] * 32))).results)
        == 32
    )


def reseal(data: bytes, offset: int, new: bytes) -> bytes:
    body = bytearray(data[:-4])
    body[offset : offset + len(new)] = new
    return bytes(body) + struct.pack(">I", zlib.crc32(bytes(body)))


def reason(decode: Decoder, data: bytes) -> tuple[str, int | None]:
    with pytest.raises(MalformedDatagram) as info:
        decode(data)
    return info.value.reason, info.value.request_id


def test_batch_reply_defects_by_reason() -> None:
    good = encode_batch_reply(BATCH_REPLY)
    assert reason(decode_batch_reply, reseal(good, 12, b"\xc8")) == ("unknown_status", 1)
    assert reason(decode_batch_reply, reseal(good, 25, b"\xc8")) == ("unknown_status", 1), "a line's status too"
    assert reason(decode_batch_reply, reseal(good, 13, b"\x01")) == ("count_mismatch", 1)
    assert reason(decode_batch_reply, reseal(good, 13, b"\x03")) == ("parse_error", 1)
    error = encode_batch_reply(BatchReply(1, Status.BUSY, 99, (), 7, 300, 2))
    assert decode_batch_reply(error) == BatchReply(1, Status.BUSY, 99, (), 7, 300, 2)
    assert reason(decode_batch_reply, reseal(error, 12, b"\x00")) == ("status_count_mismatch", 1)


def test_batch_request_defects_by_reason() -> None:
    good = encode_batch_request(BATCH_REQUEST)
    assert reason(decode_batch_request, reseal(good, 12, b"\x03")) == ("parse_error", 1)
    assert reason(decode_batch_request, reseal(good, 12, b"\x01")) == ("count_mismatch", 1)
    assert reason(decode_batch_request, reseal(good, 14, b"\x00\x01")) == ("reserved_not_zero", 1)
    assert reason(decode_batch_request, reseal(good, 20, b"\xff")) == ("bad_utf8", 1)


def test_list_defects_by_reason() -> None:
    request = encode_list_request(LIST_REQUEST)
    assert reason(decode_list_request, reseal(request, len(request) - 5, b"\x01")) == ("reserved_not_zero", 1)
    reply = encode_list_reply(LIST_REPLY)
    assert reason(decode_list_reply, reply[:-1]) == ("bad_length", None)
    assert reason(decode_list_reply, reseal(reply, 12, b"\xc8")) == ("unknown_status", 1)
    assert reason(decode_list_reply, reseal(reply, 13, b"\x01")) == ("count_mismatch", 1)


LIST_ASK = ListRequest(4, 2, "")


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        (ListReply(4, Status.OK, 2, 3, (("apple", 50),)), None),
        (ListReply(4, Status.OK, 2, 2, (("apple", 50),)), "page_mismatch"),  # page must be below pages
        (ListReply(4, Status.OK, 1, 3, (("apple", 50),)), "page_mismatch"),
        (ListReply(4, Status.BAD_PAGE, 2, 2), None),
        (ListReply(4, Status.BAD_PAGE, 2, 2, (("apple", 50),)), "entries_on_error"),
        (ListReply(4, Status.BUSY, 0, 0), None),
        (ListReply(4, Status.UNKNOWN_ITEM, 2, 3), "status_not_valid_for_kind"),
        (QuoteReply(4, Status.MALFORMED, "", 0), None),  # a server older than lists
        (QuoteReply(4, Status.UNSUPPORTED_VERSION, "", 0), None),
        (QuoteReply(4, Status.MALFORMED, "apple", 0), "wrong_kind"),
        (QuoteReply(4, Status.OK, "", 0), "wrong_kind"),
        (BatchReply(4, Status.BUSY, 0), "wrong_kind"),
    ],
)
def test_list_reply_checks(reply: Any, why: str | None) -> None:
    assert violation(LIST_ASK, 0, reply) == why


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        (BatchReply(1, Status.OK, 7, (LineResult(Status.OK, 50, 150),)), None),
        (BatchReply(1, Status.OK, 8, (LineResult(Status.OK, 50, 150),)), "lines_digest_mismatch"),
        (BatchReply(1, Status.BUSY, 7), None),
        (BatchReply(1, Status.MALFORMED, 7), None),
        (BatchReply(1, Status.BUSY, 7, (LineResult(Status.OK, 50, 150),)), "results_on_error"),
        (BatchReply(1, Status.UNKNOWN_ITEM, 7), "status_not_valid_for_kind"),
        (BatchReply(1, Status.OK, 7, (LineResult(Status.OK, 50, 150),) * 2), "line_count_mismatch"),
        (BatchReply(1, Status.OK, 7, (LineResult(Status.BUSY),)), "status_not_valid_for_line"),
        (BatchReply(1, Status.OK, 7, (LineResult(Status.OK, 50, 151),)), "total_not_price_times_quantity"),
        (QuoteReply(1, Status.OK, "apple", 3, 50, 150), "wrong_kind"),
    ],
)
def test_batch_reply_checks(reply: Any, why: str | None) -> None:
    assert violation(BatchRequest(1, (("apple", 3),)), 7, reply) == why


@pytest.mark.parametrize(
    ("line", "quantity", "why"),
    [
        (LineResult(Status.OK, 50, 150), 0, "ok_for_bad_quantity"),
        (LineResult(Status.OK, 50, 150), MAX_QUANTITY + 1, "ok_for_bad_quantity"),
        (LineResult(Status.BAD_QUANTITY, 50), 0, None),
        (LineResult(Status.BAD_QUANTITY, 50), MAX_QUANTITY + 1, None),
        (LineResult(Status.BAD_QUANTITY, 50), 1, "bad_quantity_for_good_quantity"),
        (LineResult(Status.BAD_QUANTITY, 50, 50), 0, "total_on_error"),
        (LineResult(Status.UNKNOWN_ITEM), 3, None),
        (LineResult(Status.UNKNOWN_ITEM, 50), 3, "price_for_unknown_item"),
        (LineResult(Status.OVERFLOW, 2**40), 2**23, None),
        (LineResult(Status.OVERFLOW, 2**40), 2**23 - 1, "overflow_without_overflow"),
        (LineResult(Status.OVERFLOW, 2**40), MAX_QUANTITY + 1, "overflow_without_overflow"),
        (LineResult(Status.BUSY), 3, "status_not_valid_for_line"),
        (LineResult(Status.OK, 1, 1), 1, None),
        (LineResult(Status.OK, 1, MAX_QUANTITY), MAX_QUANTITY, None),
    ],
)
def test_line_checks(line: LineResult, quantity: int, why: str | None) -> None:
    assert line_violation(quantity, line) == why


@pytest.mark.parametrize(
    ("text", "value"),
    [("1", 1), (" 7\t", 7), ("0000000001", 1), (str(MAX_QUANTITY), MAX_QUANTITY), ("  1000000000 ", MAX_QUANTITY)],
)
def test_quantities_that_follow_the_rule(text: str, value: int) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "quantity 0 is out of range: a whole number from 1 to 1000000000"),
        ("1000000001", "quantity 1000000001 is out of range"),
        ("00000000001", "quantity '00000000001' has 11 characters; at most 10 digits allowed"),
        ("1" * 25, "quantity '11111111111111111111...' has 25 characters"),
        ("-1", "quantity '-1' is not a whole number from 1 to 1000000000"),
        ("1.0", "is not a whole number"),
        ("١٢", "is not a whole number"),  # Arabic-Indic digits are digits, but not ASCII
        ("", "is not a whole number"),
    ],
)
def test_quantities_that_break_the_rule(text: str, message: str) -> None:
    with pytest.raises(BadQuantity) as info:
        parse_quantity(text)
    assert message in str(info.value)


def test_check_quantity_types_and_range() -> None:
    assert check_quantity(1) == 1 and check_quantity(MAX_QUANTITY) == MAX_QUANTITY
    with pytest.raises(BadQuantity, match="must be an int, got bool"):
        check_quantity(True)
    with pytest.raises(BadQuantity, match="must be an int, got str"):
        check_quantity("3")  # type: ignore[arg-type]
    with pytest.raises(BadQuantity, match="quantity with more than 20 digits is out of range"):
        check_quantity(10**20)
    with pytest.raises(BadQuantity, match="quantity -5 is out of range"):
        check_quantity(-5)


# ---------------------------------------------------------------- the server core's error and busy replies

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
    for rid in range(3):
        core.handle_datagram(encode_request(replace(QUOTE_REQUEST, request_id=rid)), CORE_ADDR, 0.0)
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


# ---------------------------------------------------------------- prefixes and the retry budget


def test_prefix_fields() -> None:
    assert encode_prefix("") == bytes(PREFIX_SIZE)
    assert encode_prefix("caf") == b"caf".ljust(PREFIX_SIZE, b"\0")
    assert encode_prefix("é" * (PREFIX_SIZE // 2)) == ("é" * (PREFIX_SIZE // 2)).encode()
    with pytest.raises(
        BadItem, match=f"^prefix is {PREFIX_SIZE + 1} bytes in UTF-8; the wire field holds {PREFIX_SIZE}$"
    ):
        encode_prefix("x" * (PREFIX_SIZE + 1))
    with pytest.raises(BadItem, match=r"^prefix contains NUL$"):
        encode_prefix("a\0b")
    assert decode_prefix(b"caf".ljust(PREFIX_SIZE, b"\0"), 3) == "caf"
    assert decode_prefix(bytes(PREFIX_SIZE), 3) == ""
    with pytest.raises(MalformedDatagram) as info:
        decode_prefix(b"a\0b".ljust(PREFIX_SIZE, b"\0"), 3)
    assert (info.value.reason, info.value.request_id) == ("nul_in_prefix", 3)
    with pytest.raises(MalformedDatagram) as info:
        decode_prefix(b"\xff".ljust(PREFIX_SIZE, b"\0"), 4)
    assert (info.value.reason, info.value.request_id) == ("bad_utf8", 4)
    assert normalize_prefix("  cafe\u0301 ") == "café ", "NFC, leading spaces dropped, a trailing one kept"


def test_retry_budget_next_token() -> None:
    budget = RetryBudget(per_second=10.0)
    budget.start(5.0)
    assert budget.next_token_at() == pytest.approx(5.1)
    budget.on_request(5.0)  # 0.2 of a token
    assert budget.next_token_at() == pytest.approx(5.08)
    budget.on_reply(5.0)
    assert budget.next_token_at() == 5.0, "a whole token in hand: now"
    assert RetryBudget(per_second=0.0).next_token_at() == 3600.0
    assert budget.try_spend(5.0) and budget.spent == 1
    budget.refund()
    assert budget.tokens == pytest.approx(3.2)
    full = RetryBudget(cap=2.0, tokens=2.0)
    full.refund()
    assert full.tokens == 2.0, "refunds stop at the cap"


# ---------------------------------------------------------------- the proxy's link shaping


def test_shape_delay_rate_and_limit() -> None:
    idle = LinkState()
    assert shape(idle, 1.0, 100, 0.0, 0.0, 0) == (0.0, LinkState(0.0, ()))
    delay, held = shape(idle, 1.0, 100, 0.25, 0.0, 0)
    assert (delay, held) == (0.25, LinkState(0.0, (1.25,)))
    assert shape(held, 1.0, 100, 0.25, 0.0, 1) == (None, LinkState(0.0, (1.25,))), "limit 1, one held: tail drop"
    delay, two = shape(held, 1.1, 100, 0.05, 0.0, 2)
    assert delay == pytest.approx(0.05) and two.departures == pytest.approx((1.15, 1.25)), "kept in departure order"
    assert shape(two, 1.3, 100, 0.0, 0.0, 1)[0] == 0.0, "departed ones no longer count against the limit"
    # 8,000 bit/s: a 100-byte datagram takes 0.1 s; the second queues behind the first.
    first, link = shape(idle, 1.0, 100, 0.0, 8000.0, 0)
    second, link = shape(link, 1.0, 100, 0.0, 8000.0, 0)
    assert first == pytest.approx(0.1) and second == pytest.approx(0.2) and link.free_at == pytest.approx(1.2)
    later, link = shape(link, 5.0, 50, 0.5, 8000.0, 0)
    assert later == pytest.approx(0.55) and link.free_at == pytest.approx(5.55), "delay, then transmission"


def test_gilbert_step_exact_transitions() -> None:
    # loss 0.3, mean burst 3: leave bad with 1/3, enter bad with 0.3 * (1/3) / 0.7 = 1/7.
    assert gilbert_step(False, 0.5, 0.0, 3.0) is False and gilbert_step(True, 0.0, 0.0, 3.0) is False
    assert gilbert_step(False, 1 / 7 - 1e-9, 0.3, 3.0) is True
    assert gilbert_step(False, 1 / 7 + 1e-9, 0.3, 3.0) is False
    assert gilbert_step(True, 1 / 3 - 1e-9, 0.3, 3.0) is False, "below leave_bad: back to good"
    assert gilbert_step(True, 1 / 3 + 1e-9, 0.3, 3.0) is True
    assert gilbert_step(False, 0.99, 0.9, 1.0) is True, "enter_bad is capped at 1"


def test_gemodel_step_judges_loss_by_the_state_it_was_in() -> None:
    model = (0.1, 0.4, 0.8, 0.05)  # p, r, loss in bad, loss in good
    assert gemodel_step(False, 0.09, 0.5, model) == (True, False), "moves to bad; judged as good"
    assert gemodel_step(False, 0.11, 0.04, model) == (False, True)
    assert gemodel_step(True, 0.39, 0.79, model) == (False, True), "moves to good; judged as bad"
    assert gemodel_step(True, 0.41, 0.81, model) == (True, False)


def test_decide_step_uses_the_gemodel_and_the_drop_correlation() -> None:
    plan = FaultPlan(up=Faults(gemodel=(1.0, 0.0, 1.0, 0.0)))  # always to bad, always lost there
    first, state = decide_step(plan, Direction.UP, 0, 0, DATA, 0.0, ChannelState())
    assert first.action == "deliver" and state.bad, "judged by the good state it was in, then bad"
    second, state = decide_step(plan, Direction.UP, 0, 1, DATA, 0.0, state)
    assert second.action == "drop:burst" and state.bad
    certain = FaultPlan(up=Faults(drop=0.5, drop_correlation=1.0))  # the draw never changes
    d, s = decide_step(certain, Direction.UP, 0, 0, DATA, 0.0, ChannelState(last_drop_u=0.4))
    assert d.action == "drop:random" and s.last_drop_u == 0.4
    d, s = decide_step(certain, Direction.UP, 0, 1, DATA, 0.0, ChannelState(last_drop_u=0.6))
    assert d.action == "deliver" and s.last_drop_u == 0.6


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"gemodel": (0.1, 1.5, 1.0, 0.0)}, "gemodel=(0.1, 1.5, 1.0, 0.0) holds values that are not probabilities"),
        ({"gemodel": (0.1, 0.2, 1.0, 0.0), "burst_loss": 0.1}, "gemodel and burst_loss are two settings of one"),
        ({"rate_bps": -1.0}, "rate, limit and reorder gap must be >= 0"),
        ({"limit": -1}, "rate, limit and reorder gap must be >= 0"),
        ({"reorder_gap": -1}, "rate, limit and reorder gap must be >= 0"),
        ({"drop": 1.01}, "drop=1.01 is not a probability in [0, 1]"),
        ({"truncate": -0.1}, "truncate=-0.1 is not a probability in [0, 1]"),
        ({"burst_loss": 1.0}, "burst_loss must be below 1"),
        ({"burst_len": 0.99}, "burst_len is a mean number of datagrams, at least 1"),
        ({"jitter_s": -0.01}, "delays must be >= 0"),
        ({"delay_s": float("nan")}, "fault values must be finite numbers (not nan or inf)"),
        ({"blackhole": ((0.0, float("inf")),)}, "fault values must be finite numbers"),
    ],
)
def test_faults_refuse_nonsense_by_name(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        Faults(**settings)
    assert message in str(info.value)


def test_faults_at_their_limits_are_accepted() -> None:
    Faults(drop=1.0, duplicate=0.0, gemodel=(0.0, 1.0, 1.0, 0.0), rate_bps=0.0, limit=0, reorder_gap=0)
    Faults(burst_loss=0.99, burst_len=1.0, delay_s=0.0, blackhole=((0.0, None),))
    assert FaultPlan.both(seed=4, drop=0.5) == FaultPlan(Faults(drop=0.5), Faults(drop=0.5), 4)
    plan = FaultPlan(Faults(drop=0.1), Faults(drop=0.2))
    assert plan.faults(Direction.UP) is plan.up and plan.faults(Direction.DOWN) is plan.down


def test_delivered_datagrams_are_tagged_with_what_was_done() -> None:
    everything = FaultPlan.both(corrupt=1.0, truncate=1.0, duplicate=1.0, reorder=1.0)
    d, _ = decide_step(everything, Direction.UP, 0, 0, DATA, 0.0, ChannelState())
    assert d.tags == ("corrupt", "truncate", "reorder", "duplicate") and d.copies == 2
    nothing, _ = decide_step(FaultPlan(), Direction.UP, 0, 0, DATA, 0.0, ChannelState())
    assert (nothing.action, nothing.copies, nothing.payload, nothing.tags, nothing.delay_s) == (
        "deliver",
        1,
        DATA,
        (),
        0,
    )
    gap_one = FaultPlan(up=Faults(reorder=1.0, reorder_gap=1, delay_s=0.1))
    d, state = decide_step(gap_one, Direction.UP, 0, 0, DATA, 0.0, ChannelState(since_reorder=0))
    assert (d.delay_s, d.tags, state.since_reorder) == (0.0, ("reorder",), 0), "gap 1: every one may go at once"
    gap_three = FaultPlan(up=Faults(reorder=1.0, reorder_gap=3, delay_s=0.1))
    d, state = decide_step(gap_three, Direction.UP, 0, 0, DATA, 0.0, ChannelState(since_reorder=1))
    assert (d.delay_s, d.tags, state.since_reorder) == (0.1, (), 2)
