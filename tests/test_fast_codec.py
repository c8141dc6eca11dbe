"""The fast (struct) codec against the construct reference: byte-identical, decision-identical."""

from __future__ import annotations

import contextlib
import dataclasses
import struct
import zlib
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from udp_price.wire import (
    BatchReply,
    BatchRequest,
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
    renumbered,
)
from udp_price.wire.reference import (
    reference_decode_batch_reply,
    reference_decode_batch_request,
    reference_decode_reply,
    reference_decode_request,
    reference_encode_batch_reply,
    reference_encode_batch_request,
    reference_encode_list_reply,
    reference_encode_list_request,
    reference_encode_reply,
    reference_encode_request,
)
from wire_format import LIST_PAGE_SIZE, LIST_REQUEST_SIZE, MAX_BATCH

ITEMS = ["apple", "café crème", "x" * 32, "é" * 16, "eggs (dozen)", "a"]
u64, u32, u16 = st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**16 - 1)
u8 = st.integers(0, 255)
item = st.sampled_from(ITEMS)
requests = st.builds(QuoteRequest, u64, item, u32, u8)
replies = st.builds(QuoteReply, u64, st.sampled_from(Status), st.one_of(item, st.just("")), u32, u64, u64, u32, u16, u8)
batch_requests = st.builds(
    BatchRequest, u64, st.lists(st.tuples(item, u32), min_size=1, max_size=MAX_BATCH).map(tuple), u8
)
line_results = st.builds(LineResult, st.sampled_from(Status), u64, u64)
batch_replies = st.one_of(
    st.builds(
        BatchReply,
        u64,
        st.just(Status.OK),
        u32,
        st.lists(line_results, min_size=1, max_size=MAX_BATCH).map(tuple),
        u32,
        u16,
        u8,
    ),
    st.builds(BatchReply, u64, st.sampled_from([Status.MALFORMED, Status.BUSY]), u32, st.just(()), u32, u16, u8),
)

KINDS: list[
    tuple[
        st.SearchStrategy[Any],
        Callable[[Any], bytes],
        Callable[[Any], bytes],
        Callable[[bytes], Any],
        Callable[[bytes], Any],
    ]
] = [
    (requests, encode_request, reference_encode_request, decode_request, reference_decode_request),
    (replies, encode_reply, reference_encode_reply, decode_reply, reference_decode_reply),
    (
        batch_requests,
        encode_batch_request,
        reference_encode_batch_request,
        decode_batch_request,
        reference_decode_batch_request,
    ),
    (
        batch_replies,
        encode_batch_reply,
        reference_encode_batch_reply,
        decode_batch_reply,
        reference_decode_batch_reply,
    ),
]


def outcome(decode: Callable[[bytes], Any], data: bytes) -> Any:
    try:
        return decode(data)
    except MalformedDatagram as e:
        return ("malformed", e.reason, e.request_id)


@settings(max_examples=3 * settings().max_examples)
@given(st.data())
def test_fast_encoders_are_byte_identical_to_construct(data: st.DataObject) -> None:
    for strategy, fast, reference, _, _ in KINDS:
        message = data.draw(strategy)
        assert fast(message) == reference(message)


@settings(max_examples=3 * settings().max_examples)
@given(st.data(), st.integers(0, 2000), st.integers(0, 255), st.booleans(), st.integers(-3, 40))
def test_fast_decoders_decide_like_construct(data: st.DataObject, pos: int, value: int, reseal: bool, cut: int) -> None:
    for strategy, fast_encode, _, fast, reference in KINDS:
        good = fast_encode(data.draw(strategy))
        assert outcome(fast, good) == outcome(reference, good)
        body = bytearray(good[:-4])
        body[pos % len(body)] = value
        if cut > 0:
            body = body[: max(0, len(body) - cut)]
        mutated = bytes(body) + (struct.pack(">I", zlib.crc32(bytes(body))) if reseal else good[-4:])
        assert outcome(fast, mutated) == outcome(reference, mutated)


@given(st.binary(max_size=1300))
def test_fast_decoders_on_arbitrary_bytes(data: bytes) -> None:
    for _, _, _, fast, reference in KINDS:
        assert outcome(fast, data) == outcome(reference, data)


prefix = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"), max_size=8)
list_requests = st.builds(ListRequest, u64, u32, prefix)
list_replies = st.builds(
    ListReply,
    u64,
    st.sampled_from(Status),
    u32,
    u32,
    st.lists(st.tuples(item, u64), max_size=LIST_PAGE_SIZE).map(tuple),
    u32,
)


@given(list_requests, list_replies)
def test_list_messages_match_construct_and_round_trip(req: ListRequest, rep: ListReply) -> None:
    data = encode_list_request(req)
    assert data == reference_encode_list_request(req) and len(data) == LIST_REQUEST_SIZE
    assert decode_list_request(data) == req
    page = encode_list_reply(rep)
    assert page == reference_encode_list_reply(rep)
    assert decode_list_reply(page) == rep
    assert len(page) <= len(data), "a page is never larger than the request for it"


@given(st.binary(max_size=800), st.integers(0, 700), st.integers(0, 255))
def test_list_decoders_only_raise_malformed(data: bytes, pos: int, value: int) -> None:
    good = bytearray(encode_list_reply(ListReply(1, Status.OK, 0, 1, (("apple", 50),) * 3, 7))[:-4])
    good[pos % len(good)] = value
    resealed = bytes(good) + struct.pack(">I", zlib.crc32(bytes(good)))
    for candidate in (data, resealed):
        for decode in (decode_list_request, decode_list_reply, decode_any_request, decode_any_reply):
            with contextlib.suppress(MalformedDatagram):
                decode(candidate)


@given(st.one_of(requests, batch_requests), u8)
def test_renumbered_equals_encoding_with_that_transmission(req: QuoteRequest | BatchRequest, tx: int) -> None:
    """The session encodes each request once and renumbers it per datagram: the bytes must be
    exactly those of encoding the request with that transmission number."""
    encode: Callable[[Any], bytes] = encode_request if isinstance(req, QuoteRequest) else encode_batch_request
    assert renumbered(encode(req), tx) == encode(dataclasses.replace(req, transmission=tx))
