"""Tests written to kill mutants that survived scripts/mutate.sh in the wire format's error paths:
the one-line message each defect gives a caller of the codec (the reason tag, then what was
wrong), the request id an error reply echoes, and the limits of batch and list messages."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from mutantlib import BATCH_REPLY, BATCH_REQUEST, LIST_REPLY, LIST_REQUEST, QUOTE_REPLY, QUOTE_REQUEST, reseal

from udp_price.wire import (
    BatchRequest,
    EncodeError,
    MalformedDatagram,
    QuoteReply,
    Status,
    UnsupportedVersion,
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
)
from udp_price.wire.codec import encode_ok_reply
from udp_price.wire.items import decode_item, decode_prefix, encode_item, item_problem
from wire_format import LIST_PAGE_SIZE, MAX_BATCH

REQ = encode_request(QUOTE_REQUEST)
REP = encode_reply(QUOTE_REPLY)
BREQ = encode_batch_request(BATCH_REQUEST)
BREP = encode_batch_reply(BATCH_REPLY)
LREQ = encode_list_request(LIST_REQUEST)
LREP = encode_list_reply(LIST_REPLY)
BAD_UTF8 = "'utf-8' codec can't decode byte 0xff in position {}: invalid start byte"

CASES: list[tuple[str, Callable[[bytes], Any], bytes, str, int | None]] = [
    ("short", decode_request, REQ[:-1], "(bad_length): 75 bytes, expected 76", None),
    ("version", decode_request, reseal(REQ, 2, b"\x03"), "(unsupported_version): version 3", 1),
    ("kind", decode_request, reseal(REQ, 3, b"\x07"), "(unexpected_kind): kind 7", 1),
    ("batch size", decode_batch_request, BREQ + b"\0", "(bad_length): 93 bytes is no valid batch size", None),
    ("reply size", decode_batch_reply, BREP + b"\0", "(bad_length): 64 bytes is no valid batch size", None),
    ("count", decode_batch_request, reseal(BREQ, 12, b"\x03"), "(parse_error): count beyond the datagram", 1),
    ("reply count", decode_batch_reply, reseal(BREP, 13, b"\x03"), "(parse_error): count beyond the datagram", 1),
    ("page size", decode_list_reply, LREP[:-1], "(bad_length): 109 bytes is no valid list page size", None),
    ("list status", decode_list_reply, reseal(LREP, 12, b"\xc8"), "(unknown_status): 200", 1),
    ("status", decode_reply, reseal(REP, 12, b"\xc8"), "(unknown_status): 200", 1),
    ("item", decode_reply, reseal(REP, 24, b"\xff"), "(bad_utf8): " + BAD_UTF8.format(4), 1),
    ("entry", decode_list_reply, reseal(LREP, LREP.find(b"apple"), b"\xff"), "(bad_utf8): " + BAD_UTF8.format(0), 1),
    ("prefix", decode_list_request, reseal(LREQ, LREQ.find(b"ap"), b"\xff"), "(bad_utf8): " + BAD_UTF8.format(0), 1),
]


@pytest.mark.parametrize(("decode", "data", "message", "request_id"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_defect_is_one_line_naming_reason_and_detail(
    decode: Callable[[bytes], Any], data: bytes, message: str, request_id: int | None
) -> None:
    """The request id is kept whenever the header is intact, so the server can echo it in MALFORMED."""
    with pytest.raises(MalformedDatagram) as info:
        decode(data)
    assert (str(info.value), info.value.request_id) == ("malformed datagram " + message, request_id)
    assert info.value.reason == message[1 : message.index(")")]
    assert isinstance(info.value, UnsupportedVersion) == (info.value.reason == "unsupported_version")


def test_item_and_prefix_decoders_say_what_is_not_utf8() -> None:
    for decode in (decode_item, decode_prefix):
        with pytest.raises(MalformedDatagram) as info:
            decode(b"ok\xff".ljust(32, b"\0"), 6)
        assert (str(info.value), info.value.request_id) == ("malformed datagram (bad_utf8): " + BAD_UTF8.format(2), 6)


def test_limits_of_batch_and_list_messages() -> None:
    full = BatchRequest(1, tuple((f"item{i}", i) for i in range(MAX_BATCH)))
    assert decode_batch_request(encode_batch_request(full)) == full
    with pytest.raises(EncodeError, match=f"^a batch holds 1 to {MAX_BATCH} lines, not {MAX_BATCH + 1}$"):
        encode_batch_request(replace(full, lines=(*full.lines, ("pear", 1))))
    with pytest.raises(EncodeError, match=f"^a list page holds at most {LIST_PAGE_SIZE} entries$"):
        encode_list_reply(replace(LIST_REPLY, entries=(("a", 1),) * (LIST_PAGE_SIZE + 1)))
    assert item_problem("a\0b") == "item contains NUL"


def test_the_fast_ok_reply_encoder_defaults_to_a_first_transmission_unmarked() -> None:
    reference = encode_reply(QuoteReply(5, Status.OK, "apple", 3, 50, 150, 7))
    assert encode_ok_reply(5, encode_item("apple"), 3, 50, 150, 7) == reference
