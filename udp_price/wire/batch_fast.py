"""The server's batch fast path at the byte level: an intact batch request's lines with their item
fields left raw, and an OK reply packed from flat values in one call. Like peek_quote_request in
``udp_price.wire.codec``, anything unusual returns None so the general path (decode_batch_request)
decides; tests/test_fast_batch.py checks both paths answer byte for byte alike."""

from __future__ import annotations

import zlib

from udp_price.wire.codec import _BATCH_REPLY, _F_BATCH_LINE, _F_BATCH_REQUEST, _F_CRC, _batch_reply_format
from udp_price.wire.framing import seal
from udp_price.wire.messages import MessageKind, Status
from wire_format import BATCH_REQUEST_FIXED, BATCH_REQUEST_LINE, CRC_SIZE, MAGIC, MAX_BATCH, VERSION


def peek_batch_request(data: bytes) -> tuple[int, int, list[tuple[int, bytes]]] | None:
    """(request_id, transmission, [(quantity, raw 32-byte item field)]) of an intact batch request,
    else None: the same checks as peek_quote_request (length, CRC32, magic, version, kind,
    reserved, and the count matching the length), item fields left raw."""
    count, extra = divmod(len(data) - BATCH_REQUEST_FIXED, BATCH_REQUEST_LINE)
    if extra or not 1 <= count <= MAX_BATCH or data[3] != MessageKind.BATCH_REQUEST:
        return None
    if zlib.crc32(memoryview(data)[:-CRC_SIZE]) != _F_CRC.unpack_from(data, len(data) - CRC_SIZE)[0]:
        return None
    magic, version, _, request_id, declared, transmission, reserved = _F_BATCH_REQUEST.unpack_from(data)
    if magic != MAGIC or version != VERSION or reserved != b"\0\0" or declared != count:
        return None
    return (
        request_id,
        transmission,
        list(_F_BATCH_LINE.iter_unpack(memoryview(data)[_F_BATCH_REQUEST.size : -CRC_SIZE])),
    )


def encode_ok_batch_reply(
    request_id: int,
    count: int,
    catalog_version: int,
    digest: int,
    transmission: int,
    results: list[int],
    flags: int = 0,
) -> bytes:
    """An OK batch reply from flat (status, unit_price, total) values, checked by the caller (the
    fast path); ``flags`` (FLAG_OVERLOADED or 0) is or-ed into the kind byte, as encode_reply does."""
    return seal(
        _batch_reply_format(count).pack(
            MAGIC,
            VERSION,
            _BATCH_REPLY | flags,
            request_id,
            Status.OK,
            count,
            0,
            catalog_version,
            digest,
            transmission,
            *results,
        )
    )


def batch_request_fields(data: bytes) -> list[tuple[int, bytes]]:
    """(quantity, raw 32-byte item field) of each line of a batch request already decoded (the
    server's look-up by field: a dict hit instead of a search by name)."""
    return list(_F_BATCH_LINE.iter_unpack(memoryview(data)[_F_BATCH_REQUEST.size : -CRC_SIZE]))
