"""Codec: golden bytes, round trips, and untrusted input that must decode or raise MalformedDatagram."""

from __future__ import annotations

import contextlib
import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from udp_price.wire import (
    BatchReply,
    BatchRequest,
    LineResult,
    MalformedDatagram,
    QuoteReply,
    QuoteRequest,
    Status,
    UnsupportedVersion,
    batch_reply_size,
    batch_request_size,
    decode_any_reply,
    decode_any_request,
    decode_batch_reply,
    decode_batch_request,
    decode_reply,
    decode_request,
    encode_batch_reply,
    encode_batch_request,
    encode_reply,
    encode_request,
    item_problem,
    lines_digest,
    normalize_item,
)
from wire_format import ITEM_SIZE, MAX_BATCH, MESSAGE_SIZE

RID = 0x0123456789ABCDEF
# Version 2, transmission 5.
GOLDEN_REQUEST = bytes.fromhex(
    "515002010123456789abcdef00000003" + "6170706c65" + "00" * 27 + "05" + "00" * 23 + "41d356f9"
)
GOLDEN_REPLY = bytes.fromhex(
    "515002020123456789abcdef"
    "00"
    "05"
    "0000"
    "00000003" + "6170706c65" + "00" * 27 + "0000000000000032"
    "0000000000000096"
    "00000007"
    "1aad493f"
)


# Every valid wire item: canonical (NFC, no outer spaces), 1..32 bytes of UTF-8, no NUL. The encoders
# must accept each one, so the properties below assert on every example instead of skipping refusals.
items = (
    st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"), min_size=1, max_size=32)
    .map(normalize_item)
    .filter(lambda s: item_problem(s) is None and normalize_item(s) == s)
)
u64 = st.integers(0, 2**64 - 1)
u32 = st.integers(0, 2**32 - 1)


def sealed(body: bytes) -> bytes:
    return body + struct.pack(">I", zlib.crc32(body))


def test_request_golden_bytes() -> None:
    assert encode_request(QuoteRequest(RID, "apple", 3, transmission=5)) == GOLDEN_REQUEST
    # The same layout written by hand with struct, as docs/protocol.md's table describes it.
    body = struct.pack(">2sBBQI32sB23s", b"QP", 2, 1, RID, 3, b"apple", 5, b"")
    assert sealed(body) == GOLDEN_REQUEST


def test_reply_golden_bytes() -> None:
    assert encode_reply(QuoteReply(RID, Status.OK, "apple", 3, 50, 150, 7, transmission=5)) == GOLDEN_REPLY
    body = struct.pack(">2sBBQBBHI32sQQI", b"QP", 2, 2, RID, 0, 5, 0, 3, b"apple", 50, 150, 7)
    assert sealed(body) == GOLDEN_REPLY


@given(rid=u64, item=items, quantity=u32, unit=u64, total=u64, version=u32, retry=st.integers(0, 2**16 - 1))
def test_reply_is_never_larger_than_request(
    rid: int, item: str, quantity: int, unit: int, total: int, version: int, retry: int
) -> None:
    """Encoded, not literal: whatever the values, the reply the server sends fits in the request's size."""
    request = encode_request(QuoteRequest(rid, item, quantity))
    for status in Status:
        reply = encode_reply(QuoteReply(rid, status, item, quantity, unit, total, version, retry))
        assert len(reply) <= len(request) == MESSAGE_SIZE


def test_non_ascii_item_round_trips() -> None:
    req = QuoteRequest(1, "café crème", 2)
    assert decode_request(encode_request(req)) == req


def test_decomposed_unicode_is_normalised_to_nfc() -> None:
    decomposed = "cafe\u0301 cre\u0300me"
    assert decode_request(encode_request(QuoteRequest(1, decomposed, 2))).item == "café crème"


@pytest.mark.parametrize(
    ("item", "quantity", "message"),
    [
        ("x" * (ITEM_SIZE + 1), 1, "item is 33 bytes in UTF-8; the wire field holds 32"),
        ("é" * 17, 1, "34 bytes"),
        ("", 1, "missing item"),
        ("a\0b", 1, "item contains NUL"),
        ("apple", 2**32, "quantity"),
        ("apple", -1, "quantity"),
    ],
)
def test_encoding_bad_values_is_a_caller_error(item: str, quantity: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_request(QuoteRequest(1, item, quantity))


def test_request_id_must_fit_64_bits() -> None:
    with pytest.raises(ValueError, match="request_id"):
        encode_request(QuoteRequest(2**64, "apple", 1))


def reason_of(data: bytes) -> str:
    with pytest.raises(MalformedDatagram) as info:
        decode_request(data)
    return info.value.reason


def test_defects_are_reported_by_reason() -> None:
    good = GOLDEN_REQUEST
    assert reason_of(good[:-1]) == "bad_length"
    assert reason_of(good + b"\0") == "bad_length"
    assert reason_of(b"") == "bad_length"
    flipped = bytearray(good)
    flipped[20] ^= 0x01
    assert reason_of(bytes(flipped)) == "bad_checksum"
    body = good[:-4]
    assert reason_of(sealed(b"XX" + body[2:])) == "bad_magic"
    assert reason_of(sealed(body[:3] + b"\x02" + body[4:])) == "unexpected_kind"
    assert reason_of(sealed(body[:16] + b"a\0b" + body[19:])) == "nul_in_item"
    assert reason_of(sealed(body[:16] + b"\xff\xfe" + body[18:])) == "bad_utf8"
    assert reason_of(sealed(body[:16] + b"\0" * 32 + body[48:])) == "empty_item"
    assert reason_of(sealed(body[:-1] + b"\x01")) == "reserved_not_zero"
    assert reason_of(sealed(body[:16] + b" apple" + body[22:])) == "item_not_canonical"
    assert reason_of(sealed(body[:16] + "cafe\u0301".encode() + body[22:])) == "item_not_canonical"


def test_wrong_version_keeps_the_request_id_so_the_server_can_answer() -> None:
    body = GOLDEN_REQUEST[:-4]
    with pytest.raises(UnsupportedVersion) as info:
        decode_request(sealed(body[:2] + b"\x07" + body[3:]))
    assert info.value.request_id == RID


def test_checksum_failure_does_not_trust_the_header() -> None:
    damaged = bytearray(GOLDEN_REQUEST)
    damaged[-1] ^= 0xFF
    with pytest.raises(MalformedDatagram) as info:
        decode_request(bytes(damaged))
    assert info.value.request_id is None


def test_reply_with_unknown_status_is_malformed() -> None:
    body = bytearray(GOLDEN_REPLY[:-4])
    body[12] = 200
    with pytest.raises(MalformedDatagram, match="unknown_status"):
        decode_reply(sealed(bytes(body)))


def test_request_bytes_are_not_a_reply() -> None:
    with pytest.raises(MalformedDatagram, match="unexpected_kind"):
        decode_reply(GOLDEN_REQUEST)


@given(rid=u64, item=items, quantity=u32)
def test_request_round_trip(rid: int, item: str, quantity: int) -> None:
    data = encode_request(QuoteRequest(rid, item, quantity))
    decoded = decode_request(data)
    assert (decoded.request_id, decoded.item, decoded.quantity) == (rid, item, quantity)
    assert encode_request(decoded) == data


@given(
    rid=u64,
    status=st.sampled_from(Status),
    item=items,
    quantity=u32,
    unit=u64,
    total=u64,
    version=u32,
    retry=st.integers(0, 2**16 - 1),
)
def test_reply_round_trip(
    rid: int, status: Status, item: str, quantity: int, unit: int, total: int, version: int, retry: int
) -> None:
    data = encode_reply(QuoteReply(rid, status, item, quantity, unit, total, version, retry))
    decoded = decode_reply(data)
    assert (decoded.request_id, decoded.status, decoded.item, decoded.quantity) == (rid, status, item, quantity)
    assert (decoded.unit_price, decoded.total, decoded.catalog_version, decoded.retry_after_ms) == (
        unit,
        total,
        version,
        retry,
    )
    assert encode_reply(decoded) == data


@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_malformed(data: bytes) -> None:
    for decode in (decode_request, decode_reply):
        with contextlib.suppress(MalformedDatagram):
            decode(data)


@given(kind=st.sampled_from([1, 2]), rest=st.binary(min_size=MESSAGE_SIZE - 8, max_size=MESSAGE_SIZE - 8))
def test_sealed_random_bodies_decode_to_their_own_bytes_or_raise_malformed(kind: int, rest: bytes) -> None:
    """Random bytes almost never pass the CRC; these do (right magic, version, kind, length and
    checksum), so the checks behind the CRC are what decides: anything accepted re-encodes exactly."""
    data = sealed(b"QP\x02" + bytes([kind]) + rest)
    try:
        again = encode_request(decode_request(data)) if kind == 1 else encode_reply(decode_reply(data))
    except MalformedDatagram:
        return
    assert again == data


@given(position=st.integers(0, MESSAGE_SIZE - 5), value=st.integers(0, 255), reseal=st.booleans())
def test_mutated_requests_decode_or_raise_malformed(position: int, value: int, reseal: bool) -> None:
    body = bytearray(GOLDEN_REQUEST[:-4])
    body[position] = value
    data = sealed(bytes(body)) if reseal else bytes(body) + GOLDEN_REQUEST[-4:]
    try:
        req = decode_request(data)
    except MalformedDatagram:
        return
    assert isinstance(req, QuoteRequest)
    assert encode_request(req) == data  # whatever decodes re-encodes to the very same bytes


# ---------------------------------------------------------------- batches

GOLDEN_BATCH = BatchRequest(RID, (("apple", 3), ("café crème", 2)), transmission=9)


def test_batch_request_golden_bytes() -> None:
    data = encode_batch_request(GOLDEN_BATCH)
    body = struct.pack(">2sBBQBB2sI32sI32s", b"QP", 2, 3, RID, 2, 9, b"", 3, b"apple", 2, "café crème".encode())
    assert data == sealed(body) and len(data) == batch_request_size(2) == 92


def test_batch_reply_golden_bytes_and_size() -> None:
    req = encode_batch_request(GOLDEN_BATCH)
    rep = BatchReply(
        RID,
        Status.OK,
        lines_digest(req),
        (LineResult(Status.OK, 50, 150), LineResult(Status.OK, 380, 760)),
        7,
        transmission=9,
    )
    data = encode_batch_reply(rep)
    body = struct.pack(">2sBBQBBHIIB", b"QP", 2, 4, RID, 0, 2, 0, 7, zlib.crc32(req[16:-4]), 9)
    body += struct.pack(">BQQBQQ", 0, 50, 150, 0, 380, 760)
    assert data == sealed(body)
    assert decode_batch_reply(data) == rep


@pytest.mark.parametrize("n", [1, 2, 31, MAX_BATCH])
def test_batch_reply_is_always_smaller_than_its_request(n: int) -> None:
    assert batch_reply_size(n) < batch_request_size(n)
    assert batch_reply_size(0) < batch_request_size(1)


def test_batch_limits_are_caller_errors() -> None:
    with pytest.raises(ValueError, match="1 to 32 lines"):
        encode_batch_request(BatchRequest(1, ()))
    with pytest.raises(ValueError, match="1 to 32 lines"):
        encode_batch_request(BatchRequest(1, (("apple", 1),) * 33))


def test_batch_count_must_match_length() -> None:
    data = bytearray(encode_batch_request(GOLDEN_BATCH)[:-4])
    data[12] = 1
    with pytest.raises(MalformedDatagram, match="count_mismatch"):
        decode_batch_request(sealed(bytes(data)))
    with pytest.raises(MalformedDatagram, match="bad_length"):
        decode_batch_request(encode_batch_request(GOLDEN_BATCH)[:-1])


def test_ok_batch_reply_without_results_is_malformed() -> None:
    with pytest.raises(MalformedDatagram, match="status_count_mismatch"):
        decode_batch_reply(encode_batch_reply(BatchReply(1, Status.OK, 0)))


lines_strategy = st.lists(st.tuples(items, u32), min_size=1, max_size=MAX_BATCH)


@given(rid=u64, lines=lines_strategy)
def test_batch_request_round_trip(rid: int, lines: list[tuple[str, int]]) -> None:
    data = encode_batch_request(BatchRequest(rid, tuple(lines)))
    decoded = decode_batch_request(data)
    assert decoded.request_id == rid and list(decoded.lines) == lines
    assert encode_batch_request(decoded) == data


results_strategy = st.lists(st.builds(LineResult, st.sampled_from(Status), u64, u64), min_size=1, max_size=MAX_BATCH)


@given(rid=u64, digest=u32, results=results_strategy, version=u32)
def test_batch_reply_round_trip(rid: int, digest: int, results: list[LineResult], version: int) -> None:
    rep = BatchReply(rid, Status.OK, digest, tuple(results), version)
    assert decode_batch_reply(encode_batch_reply(rep)) == rep


@given(st.binary(max_size=1300))
def test_arbitrary_bytes_never_escape_the_batch_decoders(data: bytes) -> None:
    for decode in (decode_batch_request, decode_batch_reply, decode_any_request, decode_any_reply):
        with contextlib.suppress(MalformedDatagram):
            decode(data)


@given(lines=lines_strategy, position=st.integers(0, 10_000), value=st.integers(0, 255))
def test_mutated_batches_decode_or_raise_malformed(lines: list[tuple[str, int]], position: int, value: int) -> None:
    good = encode_batch_request(BatchRequest(1, tuple(lines)))
    body = bytearray(good[:-4])
    body[position % len(body)] = value
    mutated = sealed(bytes(body))  # resealed, so the checks after the CRC are what is exercised
    try:
        decoded = decode_batch_request(mutated)
    except MalformedDatagram:
        return
    assert encode_batch_request(decoded) == mutated
