"""The catalog listing messages (list request, list reply page), encoded and decoded with the
struct formats derived in ``udp_price.wire.structs``; tests/test_fast_codec.py proves them
byte-identical to the construct reference codec. Any bad input raises MalformedDatagram; values
that cannot be encoded raise EncodeError (a ValueError) naming the field."""

from __future__ import annotations

from udp_price.errors import EncodeError, MalformedDatagram
from udp_price.wire.framing import check_frame, seal
from udp_price.wire.items import decode_prefix, encode_prefix
from udp_price.wire.messages import ListReply, ListRequest, MessageKind
from udp_price.wire.structs import _HDR, _STATUS, _array_element, _derive, _item, _item_field, _pack
from wire_format import (
    CRC_SIZE,
    LIST_PAGE_SIZE,
    LIST_REPLY_DEF,
    LIST_REPLY_ENTRY,
    LIST_REPLY_FIXED,
    LIST_REQUEST_DEF,
    LIST_REQUEST_RESERVED,
    LIST_REQUEST_SIZE,
    MAGIC,
    VERSION,
)

_F_LIST_REQUEST = _derive(LIST_REQUEST_DEF, (*_HDR, "page", "prefix", "reserved"))
_F_LIST_REPLY = _derive(LIST_REPLY_DEF, (*_HDR, "status", "count", "page", "pages", "catalog_version"))
_F_LIST_ENTRY = _derive(_array_element(LIST_REPLY_DEF), ("item", "unit_price"))
_LIST_RESERVED = bytes(LIST_REQUEST_RESERVED)
_LIST_REPLY = int(MessageKind.LIST_REPLY)


def encode_list_request(req: ListRequest) -> bytes:
    """Bytes of a list request (always LIST_REQUEST_SIZE). Raises a ValueError for a bad page number or prefix."""
    prefix = encode_prefix(req.prefix)
    return seal(
        _pack(
            _F_LIST_REQUEST, MAGIC, VERSION, MessageKind.LIST_REQUEST, req.request_id, req.page, prefix, _LIST_RESERVED
        )
    )


def decode_list_request(data: bytes) -> ListRequest:
    """Decode untrusted bytes into a ListRequest; raises MalformedDatagram on any defect."""
    request_id = check_frame(data, MessageKind.LIST_REQUEST, LIST_REQUEST_SIZE)
    page, prefix, reserved = _F_LIST_REQUEST.unpack_from(data)[4:]
    if reserved != _LIST_RESERVED:
        raise MalformedDatagram("reserved_not_zero", request_id=request_id)
    return ListRequest(request_id, page, decode_prefix(prefix, request_id))


def encode_list_reply(rep: ListReply, flags: int = 0) -> bytes:
    """Bytes of one catalog page. Raises EncodeError (a ValueError) for values that cannot be
    encoded; ``flags`` as for udp_price.wire.codec.encode_reply."""
    if len(rep.entries) > LIST_PAGE_SIZE:
        raise EncodeError(f"a list page holds at most {LIST_PAGE_SIZE} entries")
    parts = [
        _pack(
            _F_LIST_REPLY,
            MAGIC,
            VERSION,
            _LIST_REPLY | flags,
            rep.request_id,
            rep.status,
            len(rep.entries),
            rep.page,
            rep.pages,
            rep.catalog_version,
        )
    ]
    parts += [_pack(_F_LIST_ENTRY, _item_field(item), price) for item, price in rep.entries]
    return seal(b"".join(parts))


def decode_list_reply(data: bytes) -> ListReply:
    """Decode untrusted bytes into a ListReply; raises MalformedDatagram on any defect."""
    count, extra = divmod(len(data) - LIST_REPLY_FIXED, LIST_REPLY_ENTRY)
    if len(data) < LIST_REPLY_FIXED or extra or count > LIST_PAGE_SIZE:
        raise MalformedDatagram("bad_length", f"{len(data)} bytes is no valid list page size")
    request_id = check_frame(data, MessageKind.LIST_REPLY, len(data))
    status, n, page, pages, version = _F_LIST_REPLY.unpack_from(data)[4:]
    if n != count:
        raise MalformedDatagram("count_mismatch", request_id=request_id)
    if status not in _STATUS:
        raise MalformedDatagram("unknown_status", str(status), request_id=request_id)
    body = memoryview(data)[_F_LIST_REPLY.size : -CRC_SIZE]
    entries = tuple((_item(bytes(item), request_id), price) for item, price in _F_LIST_ENTRY.iter_unpack(body))
    return ListReply(request_id, _STATUS[status], page, pages, entries, version)
