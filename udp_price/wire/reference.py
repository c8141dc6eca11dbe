"""The construct reference codec: every message built and parsed by construct itself, straight from
the definitions in ``wire_format``. It is the test oracle: the fast codec (``codec``) must be
byte-identical to it on every message (tests/test_fast_codec.py). Runtime code never imports it.
"""

from __future__ import annotations

import struct

from construct import ConstructError

from udp_price.errors import EncodeError, MalformedDatagram
from udp_price.wire.framing import ZERO_RESERVED, check_batch_frame, check_frame, check_unsigned, seal
from udp_price.wire.items import decode_item, encode_item, encode_prefix
from udp_price.wire.messages import (
    BatchReply,
    BatchRequest,
    LineResult,
    ListReply,
    ListRequest,
    MessageKind,
    QuoteReply,
    QuoteRequest,
    Status,
    batch_reply_size,
    batch_request_size,
)
from wire_format import (
    BATCH_REPLY_BODY,
    BATCH_REPLY_FIXED,
    BATCH_REPLY_LINE,
    BATCH_REQUEST_BODY,
    BATCH_REQUEST_FIXED,
    BATCH_REQUEST_LINE,
    CRC_SIZE,
    ITEM_SIZE,
    LIST_REPLY_DEF,
    LIST_REQUEST_DEF,
    LIST_REQUEST_RESERVED,
    MAX_BATCH,
    QUOTE_REPLY_BODY,
    QUOTE_REQUEST_BODY,
    VERSION,
)

_LIST_RESERVED = bytes(LIST_REQUEST_RESERVED)


def reference_encode_request(req: QuoteRequest) -> bytes:
    """Bytes of a quote request. Raises EncodeError (a ValueError) for values that cannot be encoded."""
    check_unsigned(req.request_id, 64, "request_id")
    check_unsigned(req.quantity, 32, "quantity")
    check_unsigned(req.transmission, 8, "transmission")
    body = QUOTE_REQUEST_BODY.build(
        {
            "version": VERSION,
            "kind": MessageKind.QUOTE_REQUEST,
            "request_id": req.request_id,
            "quantity": req.quantity,
            "item": encode_item(req.item),
            "transmission": req.transmission,
            "reserved": ZERO_RESERVED,
        }
    )
    return seal(body)


def reference_encode_reply(rep: QuoteReply) -> bytes:
    """Bytes of a quote reply. Raises EncodeError (a ValueError) for values that cannot be encoded."""
    check_unsigned(rep.request_id, 64, "request_id")
    check_unsigned(rep.quantity, 32, "quantity")
    check_unsigned(rep.unit_price, 64, "unit_price")
    check_unsigned(rep.total, 64, "total")
    check_unsigned(rep.catalog_version, 32, "catalog_version")
    check_unsigned(rep.retry_after_ms, 16, "retry_after_ms")
    check_unsigned(rep.transmission, 8, "transmission")
    body = QUOTE_REPLY_BODY.build(
        {
            "version": VERSION,
            "kind": MessageKind.QUOTE_REPLY,
            "request_id": rep.request_id,
            "status": int(rep.status),
            "transmission": rep.transmission,
            "retry_after_ms": rep.retry_after_ms,
            "quantity": rep.quantity,
            "item": encode_item(rep.item) if rep.item else bytes(ITEM_SIZE),
            "unit_price": rep.unit_price,
            "total": rep.total,
            "catalog_version": rep.catalog_version,
        }
    )
    return seal(body)


def reference_decode_request(data: bytes) -> QuoteRequest:
    """Decode untrusted bytes into a QuoteRequest; raises MalformedDatagram on any defect."""
    request_id = check_frame(data, MessageKind.QUOTE_REQUEST)
    try:
        c = QUOTE_REQUEST_BODY.parse(data[:-CRC_SIZE])
    except (ConstructError, struct.error) as e:  # compiled parsers raise struct.error too
        raise MalformedDatagram("parse_error", str(e), request_id=request_id) from e
    if c["reserved"] != ZERO_RESERVED:
        raise MalformedDatagram("reserved_not_zero", request_id=request_id)
    item = decode_item(c["item"], request_id)
    return QuoteRequest(request_id=request_id, item=item, quantity=c["quantity"], transmission=c["transmission"])


def reference_decode_reply(data: bytes) -> QuoteReply:
    """Decode untrusted bytes into a QuoteReply; raises MalformedDatagram on any defect."""
    request_id = check_frame(data, MessageKind.QUOTE_REPLY)
    try:
        c = QUOTE_REPLY_BODY.parse(data[:-CRC_SIZE])
    except (ConstructError, struct.error) as e:
        raise MalformedDatagram("parse_error", str(e), request_id=request_id) from e
    try:
        status = Status(c["status"])
    except ValueError as e:
        raise MalformedDatagram("unknown_status", str(c["status"]), request_id=request_id) from e
    # Error replies to undecodable requests carry no item: an all-NUL field is allowed there.
    item = "" if c["item"] == bytes(ITEM_SIZE) else decode_item(c["item"], request_id)
    return QuoteReply(
        request_id=request_id,
        status=status,
        item=item,
        quantity=c["quantity"],
        unit_price=c["unit_price"],
        total=c["total"],
        catalog_version=c["catalog_version"],
        retry_after_ms=c["retry_after_ms"],
        transmission=c["transmission"],
    )


def reference_encode_batch_request(req: BatchRequest) -> bytes:
    """Bytes of a batch request. Raises EncodeError (a ValueError) for values that cannot be encoded."""
    check_unsigned(req.request_id, 64, "request_id")
    check_unsigned(req.transmission, 8, "transmission")
    if not 1 <= len(req.lines) <= MAX_BATCH:
        raise EncodeError(f"a batch holds 1 to {MAX_BATCH} lines, not {len(req.lines)}")
    lines = []
    for item, quantity in req.lines:
        check_unsigned(quantity, 32, "quantity")
        lines.append({"quantity": quantity, "item": encode_item(item)})
    body = BATCH_REQUEST_BODY.build(
        {
            "version": VERSION,
            "kind": MessageKind.BATCH_REQUEST,
            "request_id": req.request_id,
            "count": len(lines),
            "transmission": req.transmission,
            "reserved": b"\0\0",
            "lines": lines,
        }
    )
    return seal(body)


def reference_encode_batch_reply(rep: BatchReply) -> bytes:
    """Bytes of a batch reply. Raises EncodeError (a ValueError) for values that cannot be encoded."""
    check_unsigned(rep.request_id, 64, "request_id")
    check_unsigned(rep.catalog_version, 32, "catalog_version")
    check_unsigned(rep.lines_digest, 32, "lines_digest")
    check_unsigned(rep.retry_after_ms, 16, "retry_after_ms")
    check_unsigned(rep.transmission, 8, "transmission")
    if len(rep.results) > MAX_BATCH:
        raise EncodeError(f"a batch reply holds at most {MAX_BATCH} results")
    results = []
    for r in rep.results:
        check_unsigned(r.unit_price, 64, "unit_price")
        check_unsigned(r.total, 64, "total")
        results.append({"status": int(r.status), "unit_price": r.unit_price, "total": r.total})
    body = BATCH_REPLY_BODY.build(
        {
            "version": VERSION,
            "kind": MessageKind.BATCH_REPLY,
            "request_id": rep.request_id,
            "status": int(rep.status),
            "count": len(results),
            "retry_after_ms": rep.retry_after_ms,
            "catalog_version": rep.catalog_version,
            "lines_digest": rep.lines_digest,
            "transmission": rep.transmission,
            "results": results,
        }
    )
    return seal(body)


def reference_decode_batch_request(data: bytes) -> BatchRequest:
    """Decode untrusted bytes into a BatchRequest; raises MalformedDatagram on any defect."""
    request_id = check_batch_frame(data, MessageKind.BATCH_REQUEST, BATCH_REQUEST_FIXED, BATCH_REQUEST_LINE, 1)
    try:
        c = BATCH_REQUEST_BODY.parse(data[:-CRC_SIZE])
    except (ConstructError, struct.error) as e:
        raise MalformedDatagram("parse_error", str(e), request_id=request_id) from e
    if c["reserved"] != b"\0\0":
        raise MalformedDatagram("reserved_not_zero", request_id=request_id)
    if batch_request_size(c["count"]) != len(data):
        raise MalformedDatagram("count_mismatch", request_id=request_id)
    lines = tuple((decode_item(line["item"], request_id), line["quantity"]) for line in c["lines"])
    return BatchRequest(request_id=request_id, lines=lines, transmission=c["transmission"])


def reference_decode_batch_reply(data: bytes) -> BatchReply:
    """Decode untrusted bytes into a BatchReply; raises MalformedDatagram on any defect."""
    request_id = check_batch_frame(data, MessageKind.BATCH_REPLY, BATCH_REPLY_FIXED, BATCH_REPLY_LINE, 0)
    try:
        c = BATCH_REPLY_BODY.parse(data[:-CRC_SIZE])
    except (ConstructError, struct.error) as e:
        raise MalformedDatagram("parse_error", str(e), request_id=request_id) from e
    if batch_reply_size(c["count"]) != len(data):
        raise MalformedDatagram("count_mismatch", request_id=request_id)
    try:
        status = Status(c["status"])
        results = tuple(LineResult(Status(r["status"]), r["unit_price"], r["total"]) for r in c["results"])
    except ValueError as e:
        raise MalformedDatagram("unknown_status", str(e), request_id=request_id) from e
    if (status is Status.OK) != bool(results):
        raise MalformedDatagram("status_count_mismatch", request_id=request_id)
    return BatchReply(
        request_id=request_id,
        status=status,
        lines_digest=c["lines_digest"],
        results=results,
        catalog_version=c["catalog_version"],
        retry_after_ms=c["retry_after_ms"],
        transmission=c["transmission"],
    )


def reference_encode_list_reply(rep: ListReply) -> bytes:
    """The construct build of a list page, for the byte-identity tests of the fast codec."""
    body = LIST_REPLY_DEF.build(
        {
            "version": VERSION,
            "kind": MessageKind.LIST_REPLY,
            "request_id": rep.request_id,
            "status": int(rep.status),
            "count": len(rep.entries),
            "page": rep.page,
            "pages": rep.pages,
            "catalog_version": rep.catalog_version,
            "entries": [{"item": encode_item(i), "unit_price": p} for i, p in rep.entries],
        }
    )
    return seal(body)


def reference_encode_list_request(req: ListRequest) -> bytes:
    body = LIST_REQUEST_DEF.build(
        {
            "version": VERSION,
            "kind": MessageKind.LIST_REQUEST,
            "request_id": req.request_id,
            "page": req.page,
            "prefix": encode_prefix(req.prefix),
            "reserved": _LIST_RESERVED,
        }
    )
    return seal(body)
