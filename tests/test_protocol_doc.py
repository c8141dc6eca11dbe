"""docs/protocol.md's hex test vectors are the bytes our codec produces and accepts.

Another implementation is written from that document; if the codec and the document ever
disagree, this test fails, so the document cannot drift from the wire.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from udp_price.wire import (
    BatchReply,
    BatchRequest,
    LineResult,
    ListReply,
    ListRequest,
    QuoteReply,
    QuoteRequest,
    Status,
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
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
VECTOR = re.compile(r"<!-- vector: ([a-z-]+) -->\n```\n(.*?)\n```", re.S)

BATCH = BatchRequest(0x0011223344556677, (("apple", 3), ("kiwi", 1)), transmission=1)
Codec = tuple[Any, Callable[[Any], bytes], Callable[[bytes], Any]]
EXPECTED: dict[str, Codec] = {
    "quote-request": (
        QuoteRequest(0x0123456789ABCDEF, "café crème", 2, transmission=1),
        encode_request,
        decode_request,
    ),
    "quote-reply": (
        QuoteReply(0x0123456789ABCDEF, Status.OK, "café crème", 2, 380, 760, 0x11223344, transmission=1),
        encode_reply,
        decode_reply,
    ),
    "quote-reply-busy": (
        QuoteReply(
            0x0123456789ABCDEF, Status.BUSY, "apple", 3, catalog_version=0x11223344, retry_after_ms=250, transmission=2
        ),
        encode_reply,
        decode_reply,
    ),
    "batch-request": (BATCH, encode_batch_request, decode_batch_request),
    "batch-reply": (
        BatchReply(
            0x0011223344556677,
            Status.OK,
            0x1894A6BF,
            (LineResult(Status.OK, 50, 150), LineResult(Status.UNKNOWN_ITEM)),
            catalog_version=0x11223344,
            transmission=1,
        ),
        encode_batch_reply,
        decode_batch_reply,
    ),
    "list-request": (ListRequest(0x8899AABBCCDDEEFF, 0), encode_list_request, decode_list_request),
    "list-request-prefix": (ListRequest(0x8899AABBCCDDEEFF, 1, "pe"), encode_list_request, decode_list_request),
    "list-reply": (
        ListReply(0x8899AABBCCDDEEFF, Status.OK, 0, 1, (("apple", 50), ("pear", 55)), catalog_version=0x11223344),
        encode_list_reply,
        decode_list_reply,
    ),
}


def parse_hex(block: str) -> bytes:
    """Hex bytes separated by blanks; ``00*N`` is N zero bytes."""
    out = bytearray()
    for token in block.split():
        if "*" in token:
            byte, count = token.split("*")
            out += bytes([int(byte, 16)]) * int(count)
        else:
            out.append(int(token, 16))
    return bytes(out)


def vectors() -> dict[str, bytes]:
    return {name: parse_hex(block) for name, block in VECTOR.findall(DOC.read_text("utf-8"))}


def test_the_document_has_a_vector_for_every_message() -> None:
    assert sorted(vectors()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_vector_matches_the_codec(name: str) -> None:
    message, encode, decode = EXPECTED[name]
    documented = vectors()[name]
    assert encode(message) == documented
    assert decode(documented) == message


def test_the_batch_reply_vector_carries_the_batch_request_digest() -> None:
    assert lines_digest(vectors()["batch-request"]) == EXPECTED["batch-reply"][0].lines_digest
