"""Tests written to kill mutants that survived scripts/mutate.sh in the wire format: every numeric
field's range at both ends in every encoder, decoders' reasons for each defect, the list messages'
round trips, quantities and prefixes."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from mutantlib import (
    BATCH_REPLY,
    BATCH_REQUEST,
    LIST_REPLY,
    LIST_REQUEST,
    QUOTE_REPLY,
    QUOTE_REQUEST,
    Decoder,
    Encoder,
    reseal,
)

from udp_price.client.reply_checks import line_violation, violation
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
    parse_quantity,
)
from udp_price.wire.framing import (
    FLAG_OVERLOADED,
    is_sealed,
    mark_overloaded,
    peek_header,
    seal,
    split_overload_mark,
)
from udp_price.wire.items import (
    check_quantity,
    decode_item,
    decode_prefix,
    encode_item,
    encode_prefix,
    normalize_prefix,
)
from wire_format import HEADER_SIZE, ITEM_SIZE, MAX_QUANTITY, PREFIX_SIZE

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


# ---------------------------------------------------------------- prefixes


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


# ---------------------------------------------------------------- items, quantities and framing at the edges


def test_item_errors_carry_the_request_id_so_the_error_reply_can_echo_it() -> None:
    rid = 2**63 + 5
    cases = {
        "empty_item": bytes(ITEM_SIZE),
        "nul_in_item": b"a\0b".ljust(ITEM_SIZE, b"\0"),
        "bad_utf8": b"\xff".ljust(ITEM_SIZE, b"\0"),
        "item_not_canonical": b" apple".ljust(ITEM_SIZE, b"\0"),
    }
    for why, raw in cases.items():
        with pytest.raises(MalformedDatagram) as info:
            decode_item(raw, rid)
        assert (info.value.reason, info.value.request_id) == (why, rid)


def test_only_nul_padding_is_stripped_from_items_and_prefixes() -> None:
    assert decode_item(encode_item("XX"), 1) == "XX"
    assert decode_prefix(encode_prefix("XX"), 1) == "XX"


def test_quantity_messages_quote_at_most_twenty_characters_and_twenty_digits() -> None:
    with pytest.raises(BadQuantity, match=r"^quantity 'aaaaaaaaaaaaaaaaaaaa' has 20 characters"):
        parse_quantity("a" * 20)
    with pytest.raises(BadQuantity, match=r"^quantity 'aaaaaaaaaaaaaaaaaaaa\.\.\.' "):
        parse_quantity("a" * 21)
    with pytest.raises(BadQuantity, match=r"^quantity 'X3' is not a whole number"):
        parse_quantity("X3")
    with pytest.raises(BadQuantity, match=r"^quantity '3\\n' is not a whole number"):
        parse_quantity("3\n")
    assert parse_quantity(" \t3\t ") == 3
    for shown, value in ((str(1 - 10**20), 1 - 10**20), ("with more than 20 digits", -(10**20))):
        with pytest.raises(BadQuantity, match=f"^quantity {shown} is out of range"):
            check_quantity(value)


def test_sealing_needs_a_whole_header_and_peeking_needs_our_magic() -> None:
    assert is_sealed(seal(bytes(HEADER_SIZE)))
    assert not is_sealed(seal(bytes(HEADER_SIZE - 1)))
    assert not is_sealed(seal(bytes(4)))
    rid = 2**63 + 5
    request = encode_request(replace(QUOTE_REQUEST, request_id=rid))
    assert peek_header(request) == (2, rid)
    assert peek_header(seal(b"XX" + request[2:-4])) is None, "sealed but not our magic"


def test_reply_decoding_errors_carry_the_request_id() -> None:
    rid = 2**63 + 9
    reply = encode_reply(replace(QUOTE_REPLY, request_id=rid))
    for offset, new, why in ((12, b"\xc8", "unknown_status"), (24, b"\xff", "bad_utf8")):
        with pytest.raises(MalformedDatagram) as info:
            decode_reply(reseal(reply, offset, new))
        assert (info.value.reason, info.value.request_id) == (why, rid)
    listed = encode_list_reply(replace(LIST_REPLY, request_id=rid))
    with pytest.raises(MalformedDatagram) as info:
        decode_list_reply(reseal(listed, 12, b"\xc8"))
    assert (info.value.reason, info.value.request_id) == ("unknown_status", rid)


def test_the_overloaded_flag_is_set_and_taken_off_only_on_an_intact_datagram() -> None:
    reply = encode_reply(QUOTE_REPLY)
    marked = mark_overloaded(reply)
    assert marked == reseal(reply, 3, bytes([reply[3] | FLAG_OVERLOADED])), "the flag bit, a new seal, nothing else"
    assert split_overload_mark(marked) == (reply, True)
    assert split_overload_mark(reply) == (reply, False), "an unmarked reply is not a mark"
    noisy = reply[:3] + bytes([reply[3] | FLAG_OVERLOADED]) + reply[4:]  # the bit flipped in transit
    assert split_overload_mark(noisy) == (noisy, False), "noise is never resealed into a reply"
    for short in (b"", b"\x55\x50\x02", b"\x55\x50\x02\x41"):
        assert split_overload_mark(short) == (short, False)
