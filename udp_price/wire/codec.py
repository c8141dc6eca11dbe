"""The udp-price wire format: every message is one fixed-size UDP datagram.

construct is the single definition of the byte layout. Each message is a
construct ``Struct`` for everything before the trailing CRC32, compiled for
speed; the CRC32 (zlib polynomial, big-endian) over those bytes is appended
outside construct because ``Checksum`` does not compile.

Untrusted bytes are decoded in this order: exact length, then CRC32 (the
version-independent seal, see ``is_sealed``), then magic, version and kind,
then a guarded parse, then meaning (no NUL inside names, valid UTF-8, zero
reserved bytes). Any bad input
raises :class:`MalformedDatagram`; nothing else escapes the decoders.

Requests and replies have the same size, so a reply is never larger than the
request that caused it: the service cannot amplify traffic.
"""

from __future__ import annotations

import functools
import re
import struct
import unicodedata
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from construct import (
    Array,
    Bytes,
    Const,
    ConstructError,
    FormatField,
    Int8ub,
    Int16ub,
    Int32ub,
    Int64ub,
    Struct,
    this,
)

MAGIC = b"QP"
VERSION = 2
"""Version 2 added the transmission number (see TRANSMISSION below); a version-1 peer gets UNSUPPORTED_VERSION."""
ITEM_SIZE = 32
"""Bytes of the NUL-padded UTF-8 item field."""
MAX_QUANTITY = 1_000_000_000
"""Largest quantity the server prices; 0 and anything above is BAD_QUANTITY."""
MAX_TOTAL = 2**63 - 1
"""Largest total in minor units; above it the server answers OVERFLOW (fits a signed i64)."""
MAX_RETRY_AFTER_MS = 2**16 - 1
CRC_SIZE = 4
HEADER_SIZE = 12
MESSAGE_SIZE = 76
"""Every request and every reply is exactly this many bytes."""
_REQUEST_RESERVED = 23
MAX_TRANSMISSION = 255
"""Transmissions are numbered 1..255 per request (0: the sender does not number them); the reply
echoes the number of the transmission it answers, as QUIC packet numbers do (RFC 9002 section 5),
so every reply is an unambiguous RTT sample and a reply to an earlier transmission proves a
retransmission spurious."""
MAX_BATCH = 32
"""Most lines in one batch request: 20 + 36 * 32 = 1172 bytes, well inside a 1500-byte MTU."""
BATCH_REQUEST_FIXED = 20
BATCH_REQUEST_LINE = 36
BATCH_REPLY_FIXED = 29
BATCH_REPLY_LINE = 17
LIST_PAGE_SIZE = 16
"""Catalog entries per list page: 26 + 40 * 16 = 666 bytes, so a list request is padded to 666."""
LIST_REPLY_FIXED = 26
LIST_REPLY_ENTRY = 40
LIST_REQUEST_SIZE = LIST_REPLY_FIXED + LIST_REPLY_ENTRY * LIST_PAGE_SIZE


class MessageKind(IntEnum):
    QUOTE_REQUEST = 1
    QUOTE_REPLY = 2
    BATCH_REQUEST = 3
    BATCH_REPLY = 4
    LIST_REQUEST = 5
    LIST_REPLY = 6


class Status(IntEnum):
    """Reply status codes. Values are stable on the wire; new ones are appended."""

    OK = 0
    UNKNOWN_ITEM = 1
    BAD_QUANTITY = 2
    OVERFLOW = 3
    UNSUPPORTED_VERSION = 4
    MALFORMED = 5
    BUSY = 6
    BAD_PAGE = 7


class QuoteError(Exception):
    """Root of every error udp-price raises on purpose."""


class MalformedDatagram(QuoteError):
    """The datagram could not be decoded.

    ``reason`` is a short machine-friendly tag (used as a counter name).
    ``request_id`` is set when the header survived intact (length and CRC32
    correct), so the server may answer with an error status; otherwise it is
    None and the datagram must be dropped silently.
    """

    def __init__(self, reason: str, detail: str = "", request_id: int | None = None) -> None:
        super().__init__(f"malformed datagram ({reason}){': ' + detail if detail else ''}")
        self.reason = reason
        self.request_id = request_id


class UnsupportedVersion(MalformedDatagram):
    """The datagram carries our magic but a protocol version we do not speak."""


_HEADER = (
    "magic" / Const(MAGIC),
    "version" / Int8ub,
    "kind" / Int8ub,
    "request_id" / Int64ub,
)

QUOTE_REQUEST_DEF = Struct(
    *_HEADER,
    "quantity" / Int32ub,
    "item" / Bytes(ITEM_SIZE),
    "transmission" / Int8ub,
    # Pads the request to the reply's size so a reply never amplifies; must be zero.
    "reserved" / Bytes(_REQUEST_RESERVED),
)

QUOTE_REPLY_DEF = Struct(
    *_HEADER,
    "status" / Int8ub,
    "transmission" / Int8ub,  # echoed from the request (version 1 called this byte "flags", always 0)
    "retry_after_ms" / Int16ub,
    "quantity" / Int32ub,
    "item" / Bytes(ITEM_SIZE),
    "unit_price" / Int64ub,
    "total" / Int64ub,
    "catalog_version" / Int32ub,
)

_BATCH_LINE = Struct("quantity" / Int32ub, "item" / Bytes(ITEM_SIZE))
BATCH_REQUEST_DEF = Struct(
    *_HEADER,
    "count" / Int8ub,
    "transmission" / Int8ub,
    "reserved" / Bytes(2),
    "lines" / Array(this.count, _BATCH_LINE),
)

_BATCH_RESULT = Struct("status" / Int8ub, "unit_price" / Int64ub, "total" / Int64ub)
BATCH_REPLY_DEF = Struct(
    *_HEADER,
    "status" / Int8ub,
    "count" / Int8ub,
    "retry_after_ms" / Int16ub,
    "catalog_version" / Int32ub,
    # CRC32 of the request's line bytes: binds the reply to exactly the lines asked for,
    # as the echoed item and quantity do for single quotes, in 4 bytes instead of 36 per line.
    "lines_digest" / Int32ub,
    "transmission" / Int8ub,  # echoed from the request
    "results" / Array(this.count, _BATCH_RESULT),
)

QUOTE_REQUEST_BODY = QUOTE_REQUEST_DEF.compile()
QUOTE_REPLY_BODY = QUOTE_REPLY_DEF.compile()
BATCH_REQUEST_BODY = BATCH_REQUEST_DEF.compile()
BATCH_REPLY_BODY = BATCH_REPLY_DEF.compile()

LIST_REQUEST_DEF = Struct(
    *_HEADER,
    "page" / Int16ub,
    # Pads the request to the size of the largest page, so a listing never amplifies; must be zero.
    "reserved" / Bytes(LIST_REQUEST_SIZE - HEADER_SIZE - 2 - CRC_SIZE),
)
_LIST_ENTRY = Struct("item" / Bytes(ITEM_SIZE), "unit_price" / Int64ub)
LIST_REPLY_DEF = Struct(
    *_HEADER,
    "status" / Int8ub,
    "count" / Int8ub,
    "page" / Int16ub,
    "pages" / Int16ub,
    "catalog_version" / Int32ub,
    "entries" / Array(this.count, _LIST_ENTRY),
)

_CRC = Int32ub
_ZERO_RESERVED = bytes(_REQUEST_RESERVED)


@dataclass(frozen=True, slots=True)
class QuoteRequest:
    """Ask for the price of ``quantity`` units of ``item``."""

    request_id: int
    item: str
    quantity: int
    transmission: int = 0
    """Which transmission of this request this datagram is, 1..MAX_TRANSMISSION (0: not numbered)."""


@dataclass(frozen=True, slots=True)
class QuoteReply:
    """Answer to a QuoteRequest; money in integer minor units (cents)."""

    request_id: int
    status: Status
    item: str
    quantity: int
    unit_price: int = 0
    total: int = 0
    catalog_version: int = 0
    retry_after_ms: int = 0
    transmission: int = 0
    """The transmission number of the request datagram this answers (echoed)."""


@dataclass(frozen=True, slots=True)
class BatchRequest:
    """Up to MAX_BATCH (item, quantity) lines in one datagram."""

    request_id: int
    lines: tuple[tuple[str, int], ...]
    transmission: int = 0


@dataclass(frozen=True, slots=True)
class LineResult:
    status: Status
    unit_price: int = 0
    total: int = 0


@dataclass(frozen=True, slots=True)
class BatchReply:
    """Per-line results in request order. A status other than OK applies to the whole batch,
    which then carries no results (MALFORMED, UNSUPPORTED_VERSION, BUSY)."""

    request_id: int
    status: Status
    lines_digest: int
    results: tuple[LineResult, ...] = ()
    catalog_version: int = 0
    retry_after_ms: int = 0
    transmission: int = 0


@dataclass(frozen=True, slots=True)
class ListRequest:
    """Ask for one page of the catalog (0-based), LIST_PAGE_SIZE items a page, sorted by name."""

    request_id: int
    page: int


@dataclass(frozen=True, slots=True)
class ListReply:
    """One page of (item, unit price in cents). ``pages`` is the page count of this catalog version."""

    request_id: int
    status: Status
    page: int
    pages: int
    entries: tuple[tuple[str, int], ...] = ()
    catalog_version: int = 0


def batch_request_size(count: int) -> int:
    return BATCH_REQUEST_FIXED + BATCH_REQUEST_LINE * count


def batch_reply_size(count: int) -> int:
    return BATCH_REPLY_FIXED + BATCH_REPLY_LINE * count


def normalize_item(name: str) -> str:
    """The canonical form of an item name: NFC, so 'café' matches however it was typed."""
    return unicodedata.normalize("NFC", name.strip())


def encode_item(name: str) -> bytes:
    """UTF-8 item name, NUL-padded to ITEM_SIZE. Raises ValueError if it cannot go on the wire."""
    raw = normalize_item(name).encode("utf-8")
    if not raw:
        raise ValueError("item name is empty")
    if b"\0" in raw:
        raise ValueError("item name contains NUL")
    if len(raw) > ITEM_SIZE:
        raise ValueError(f"item name is {len(raw)} bytes in UTF-8; the wire allows {ITEM_SIZE}")
    return raw.ljust(ITEM_SIZE, b"\0")


def _decode_item(raw: bytes, request_id: int) -> str:
    name = raw.rstrip(b"\0")
    if not name:
        raise MalformedDatagram("empty_item", request_id=request_id)
    if b"\0" in name:
        raise MalformedDatagram("nul_in_item", request_id=request_id)
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MalformedDatagram("bad_utf8", str(e), request_id=request_id) from e
    if normalize_item(text) != text:
        # Only one spelling of a name is valid on the wire (NFC, no outer spaces), so equal names are equal bytes.
        raise MalformedDatagram("item_not_canonical", request_id=request_id)
    return text


def _check_u(value: int, bits: int, field: str) -> None:
    if not 0 <= value < 2**bits:
        raise ValueError(f"{field}={value} does not fit in an unsigned {bits}-bit field")


def _seal(body: bytes) -> bytes:
    crc: bytes = _CRC.build(zlib.crc32(body))
    return body + crc


def reference_encode_request(req: QuoteRequest) -> bytes:
    """Bytes of a quote request. Raises ValueError for values that cannot be encoded."""
    _check_u(req.request_id, 64, "request_id")
    _check_u(req.quantity, 32, "quantity")
    _check_u(req.transmission, 8, "transmission")
    body = QUOTE_REQUEST_BODY.build(
        {
            "version": VERSION,
            "kind": MessageKind.QUOTE_REQUEST,
            "request_id": req.request_id,
            "quantity": req.quantity,
            "item": encode_item(req.item),
            "transmission": req.transmission,
            "reserved": _ZERO_RESERVED,
        }
    )
    return _seal(body)


def reference_encode_reply(rep: QuoteReply) -> bytes:
    """Bytes of a quote reply. Raises ValueError for values that cannot be encoded."""
    _check_u(rep.request_id, 64, "request_id")
    _check_u(rep.quantity, 32, "quantity")
    _check_u(rep.unit_price, 64, "unit_price")
    _check_u(rep.total, 64, "total")
    _check_u(rep.catalog_version, 32, "catalog_version")
    _check_u(rep.retry_after_ms, 16, "retry_after_ms")
    _check_u(rep.transmission, 8, "transmission")
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
    return _seal(body)


def _check_frame(data: bytes, kind: MessageKind, size: int = MESSAGE_SIZE) -> int:
    """Length, CRC32, magic, version and kind; returns the request id once the header is trusted."""
    if len(data) != size:
        raise MalformedDatagram("bad_length", f"{len(data)} bytes, expected {size}")
    body, crc = data[:-CRC_SIZE], data[-CRC_SIZE:]
    if zlib.crc32(body) != int.from_bytes(crc, "big"):
        raise MalformedDatagram("bad_checksum")
    if data[:2] != MAGIC:
        raise MalformedDatagram("bad_magic")
    request_id = int.from_bytes(data[4:12], "big")
    if data[2] != VERSION:
        raise UnsupportedVersion("unsupported_version", f"version {data[2]}", request_id=request_id)
    if data[3] != kind:
        raise MalformedDatagram("unexpected_kind", f"kind {data[3]}", request_id=request_id)
    return request_id


def reference_decode_request(data: bytes) -> QuoteRequest:
    """Decode untrusted bytes into a QuoteRequest; raises MalformedDatagram on any defect."""
    request_id = _check_frame(data, MessageKind.QUOTE_REQUEST)
    try:
        c = QUOTE_REQUEST_BODY.parse(data[:-CRC_SIZE])
    except (ConstructError, struct.error) as e:  # compiled parsers raise struct.error too
        raise MalformedDatagram("parse_error", str(e), request_id=request_id) from e
    if c["reserved"] != _ZERO_RESERVED:
        raise MalformedDatagram("reserved_not_zero", request_id=request_id)
    item = _decode_item(c["item"], request_id)
    return QuoteRequest(request_id=request_id, item=item, quantity=c["quantity"], transmission=c["transmission"])


def reference_decode_reply(data: bytes) -> QuoteReply:
    """Decode untrusted bytes into a QuoteReply; raises MalformedDatagram on any defect."""
    request_id = _check_frame(data, MessageKind.QUOTE_REPLY)
    try:
        c = QUOTE_REPLY_BODY.parse(data[:-CRC_SIZE])
    except (ConstructError, struct.error) as e:
        raise MalformedDatagram("parse_error", str(e), request_id=request_id) from e
    try:
        status = Status(c["status"])
    except ValueError as e:
        raise MalformedDatagram("unknown_status", str(c["status"]), request_id=request_id) from e
    # Error replies to undecodable requests carry no item: an all-NUL field is allowed there.
    item = "" if c["item"] == bytes(ITEM_SIZE) else _decode_item(c["item"], request_id)
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


REQUEST_KINDS = frozenset({MessageKind.QUOTE_REQUEST, MessageKind.BATCH_REQUEST, MessageKind.LIST_REQUEST})
"""Kinds a server may answer. Kind numbers are stable across protocol versions (requests odd,
replies even); anything else, replies above all, is never answered, so no two peers can be made to
answer each other forever (the echo/chargen loop, CVE-1999-0103)."""


def is_sealed(data: bytes) -> bool:
    """The framing every protocol version shares: a full header, and a last 4 bytes that are the
    CRC32 of everything before them. Checkable before the version is judged, so a corrupted
    version byte reads as noise (bad checksum), never as another version."""
    return len(data) >= HEADER_SIZE + CRC_SIZE and zlib.crc32(memoryview(data)[:-CRC_SIZE]) == int.from_bytes(
        data[-CRC_SIZE:], "big"
    )


def peek_header(data: bytes) -> tuple[int, int] | None:
    """(version, request_id) of a sealed datagram (see is_sealed) that carries our magic, else None.

    Used only to answer UNSUPPORTED_VERSION: the first 12 bytes (magic, version,
    kind, request id) and the trailing CRC32 are promised stable across protocol versions.
    """
    if len(data) < HEADER_SIZE or data[:2] != MAGIC or not is_sealed(data):
        return None
    return data[2], int.from_bytes(data[4:12], "big")


# ---------------------------------------------------------------- batches


def _lines_bytes(data: bytes) -> bytes:
    return data[BATCH_REQUEST_FIXED - CRC_SIZE : -CRC_SIZE]


def lines_digest(request_datagram: bytes) -> int:
    """The digest a batch reply must carry for this encoded batch request."""
    return zlib.crc32(_lines_bytes(request_datagram))


def reference_encode_batch_request(req: BatchRequest) -> bytes:
    """Bytes of a batch request. Raises ValueError for values that cannot be encoded."""
    _check_u(req.request_id, 64, "request_id")
    _check_u(req.transmission, 8, "transmission")
    if not 1 <= len(req.lines) <= MAX_BATCH:
        raise ValueError(f"a batch holds 1 to {MAX_BATCH} lines, not {len(req.lines)}")
    lines = []
    for item, quantity in req.lines:
        _check_u(quantity, 32, "quantity")
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
    return _seal(body)


def reference_encode_batch_reply(rep: BatchReply) -> bytes:
    """Bytes of a batch reply. Raises ValueError for values that cannot be encoded."""
    _check_u(rep.request_id, 64, "request_id")
    _check_u(rep.catalog_version, 32, "catalog_version")
    _check_u(rep.lines_digest, 32, "lines_digest")
    _check_u(rep.retry_after_ms, 16, "retry_after_ms")
    _check_u(rep.transmission, 8, "transmission")
    if len(rep.results) > MAX_BATCH:
        raise ValueError(f"a batch reply holds at most {MAX_BATCH} results")
    results = []
    for r in rep.results:
        _check_u(r.unit_price, 64, "unit_price")
        _check_u(r.total, 64, "total")
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
    return _seal(body)


def _check_batch_frame(data: bytes, kind: MessageKind, fixed: int, per_line: int, min_count: int) -> int:
    """Like _check_frame for variable-length batches: the length must be fixed + per_line * count."""
    count, extra = divmod(len(data) - fixed, per_line)
    if len(data) < fixed or extra or not min_count <= count <= MAX_BATCH:
        raise MalformedDatagram("bad_length", f"{len(data)} bytes is no valid batch size")
    return _check_frame(data, kind, len(data))


def reference_decode_batch_request(data: bytes) -> BatchRequest:
    """Decode untrusted bytes into a BatchRequest; raises MalformedDatagram on any defect."""
    request_id = _check_batch_frame(data, MessageKind.BATCH_REQUEST, BATCH_REQUEST_FIXED, BATCH_REQUEST_LINE, 1)
    try:
        c = BATCH_REQUEST_BODY.parse(data[:-CRC_SIZE])
    except (ConstructError, struct.error) as e:
        raise MalformedDatagram("parse_error", str(e), request_id=request_id) from e
    if c["reserved"] != b"\0\0":
        raise MalformedDatagram("reserved_not_zero", request_id=request_id)
    if batch_request_size(c["count"]) != len(data):
        raise MalformedDatagram("count_mismatch", request_id=request_id)
    lines = tuple((_decode_item(line["item"], request_id), line["quantity"]) for line in c["lines"])
    return BatchRequest(request_id=request_id, lines=lines, transmission=c["transmission"])


def reference_decode_batch_reply(data: bytes) -> BatchReply:
    """Decode untrusted bytes into a BatchReply; raises MalformedDatagram on any defect."""
    request_id = _check_batch_frame(data, MessageKind.BATCH_REPLY, BATCH_REPLY_FIXED, BATCH_REPLY_LINE, 0)
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


Request = QuoteRequest | BatchRequest | ListRequest
Reply = QuoteReply | BatchReply | ListReply


# ---------------------------------------------------------------- the fast codec
#
# Profiling the server showed construct's compiled code at ~14 us per request (parse +
# build) of the ~21 us spent per datagram. These functions do the same work with
# struct.Struct formats derived from the construct definitions above at import time, so
# construct stays the single definition of the layout; tests/test_fast_codec.py proves
# them byte-identical to the reference_* (construct) functions on every message kind.


def _fixed_format(definition: Struct) -> tuple[str, tuple[str, ...]]:
    """(struct format, field names) for the fixed-size fields of a construct Struct, up to any Array."""
    fmt, names = ">", []
    for field in definition.subcons:
        sub = field.subcon
        if isinstance(sub, Array):
            break
        if isinstance(sub, Const):
            fmt += f"{len(sub.value)}s"
        elif isinstance(sub, Bytes) and isinstance(sub.length, int):
            fmt += f"{sub.length}s"
        elif isinstance(sub, FormatField) and sub.fmtstr[0] == ">":
            fmt += sub.fmtstr[1:]
        else:
            raise TypeError(f"field {field.name!r} has no fixed struct format")
        names.append(field.name)
    return fmt, tuple(names)


def _array_element(definition: Struct) -> Struct:
    arrays = [f.subcon for f in definition.subcons if isinstance(f.subcon, Array)]
    assert len(arrays) == 1, "batch messages end in exactly one Array"
    element: Struct = arrays[0].subcon
    return element


_FIELD_NAMES: dict[str, tuple[str, ...]] = {}


def _derive(definition: Struct, expected: tuple[str, ...]) -> struct.Struct:
    fmt, names = _fixed_format(definition)
    # The fast functions below unpack by position: refuse to start if the definition moved on.
    if names != expected:
        raise RuntimeError(f"fast codec out of date: {names} != {expected}")
    _FIELD_NAMES[fmt] = names
    return struct.Struct(fmt)


_HDR = ("magic", "version", "kind", "request_id")
_F_REQUEST = _derive(QUOTE_REQUEST_DEF, (*_HDR, "quantity", "item", "transmission", "reserved"))
_F_REPLY = _derive(
    QUOTE_REPLY_DEF,
    (*_HDR, "status", "transmission", "retry_after_ms", "quantity", "item", "unit_price", "total", "catalog_version"),
)
_F_BATCH_REQUEST = _derive(BATCH_REQUEST_DEF, (*_HDR, "count", "transmission", "reserved"))
_F_BATCH_LINE = _derive(_array_element(BATCH_REQUEST_DEF), ("quantity", "item"))
_F_BATCH_REPLY = _derive(
    BATCH_REPLY_DEF, (*_HDR, "status", "count", "retry_after_ms", "catalog_version", "lines_digest", "transmission")
)
_F_BATCH_RESULT = _derive(_array_element(BATCH_REPLY_DEF), ("status", "unit_price", "total"))
_F_LIST_REQUEST = _derive(LIST_REQUEST_DEF, (*_HDR, "page", "reserved"))
_F_LIST_REPLY = _derive(LIST_REPLY_DEF, (*_HDR, "status", "count", "page", "pages", "catalog_version"))
_F_LIST_ENTRY = _derive(_array_element(LIST_REPLY_DEF), ("item", "unit_price"))
_LIST_RESERVED = bytes(_F_LIST_REQUEST.size - HEADER_SIZE - 2)
_F_CRC = struct.Struct(">I")
_STATUS = {s.value: s for s in Status}


@functools.lru_cache(maxsize=4096)
def _item_field(name: str) -> bytes:
    """encode_item, remembered: a catalog's few names are encoded over and over."""
    return encode_item(name)


@functools.lru_cache(maxsize=4096)
def _item_or_reason(raw: bytes) -> str | tuple[str, str]:
    """The item in a 32-byte field, or (reason, detail) for MalformedDatagram; remembered."""
    try:
        return _decode_item(raw, 0)
    except MalformedDatagram as e:
        return e.reason, str(e.__cause__ or "")


def _item(raw: bytes, request_id: int) -> str:
    found = _item_or_reason(raw)
    if isinstance(found, tuple):
        raise MalformedDatagram(found[0], found[1], request_id=request_id)
    return found


def _sealed(body: bytes) -> bytes:
    return body + _F_CRC.pack(zlib.crc32(body))


def _pack(fmt: struct.Struct, *values: Any) -> bytes:
    """fmt.pack, with struct's own range checks on the unsigned fields turned into a ValueError
    that names the field (found only on this error path, so the common path stays fast)."""
    try:
        return fmt.pack(*values)
    except struct.error:
        names = _FIELD_NAMES[fmt.format]
        codes = re.findall(r"\d*[a-zA-Z]", fmt.format[1:])
        for name, code, value in zip(names, codes, values, strict=True):
            try:
                struct.pack(">" + code, value)
            except struct.error:
                raise ValueError(f"{name}={value} does not fit its {struct.calcsize(code) * 8}-bit field") from None
        raise


def encode_request(req: QuoteRequest) -> bytes:
    """Bytes of a quote request. Raises ValueError for values that cannot be encoded."""
    item = _item_field(req.item)
    return _sealed(
        _pack(
            _F_REQUEST,
            MAGIC,
            VERSION,
            MessageKind.QUOTE_REQUEST,
            req.request_id,
            req.quantity,
            item,
            req.transmission,
            _ZERO_RESERVED,
        )
    )


def encode_reply(rep: QuoteReply) -> bytes:
    """Bytes of a quote reply. Raises ValueError for values that cannot be encoded."""
    item = _item_field(rep.item) if rep.item else bytes(ITEM_SIZE)
    return _sealed(
        _pack(
            _F_REPLY,
            MAGIC,
            VERSION,
            MessageKind.QUOTE_REPLY,
            rep.request_id,
            rep.status,
            rep.transmission,
            rep.retry_after_ms,
            rep.quantity,
            item,
            rep.unit_price,
            rep.total,
            rep.catalog_version,
        )
    )


def peek_quote_request(data: bytes) -> tuple[int, bytes, int, int] | None:
    """(request_id, raw 32-byte item field, quantity, transmission) of an intact single quote
    request, else None.

    Checks length, CRC32, magic, version, kind and the reserved bytes, but leaves the item field
    raw: the server's hot path matches it byte for byte against encode_item() of each catalog
    name, which only a canonical, valid name can equal. Anything unusual returns None and goes
    through decode_request instead.
    """
    if len(data) != MESSAGE_SIZE or data[3] != MessageKind.QUOTE_REQUEST:
        return None
    if zlib.crc32(memoryview(data)[:-CRC_SIZE]) != _F_CRC.unpack_from(data, MESSAGE_SIZE - CRC_SIZE)[0]:
        return None
    magic, version, _, request_id, quantity, item, transmission, reserved = _F_REQUEST.unpack_from(data)
    if magic != MAGIC or version != VERSION or reserved != _ZERO_RESERVED:
        return None
    return request_id, item, quantity, transmission


def encode_ok_reply(
    request_id: int,
    item_field: bytes,
    quantity: int,
    unit_price: int,
    total: int,
    catalog_version: int,
    transmission: int = 0,
) -> bytes:
    """An OK quote reply for an item field already in wire form (as peek_quote_request gave it)."""
    return _sealed(
        _F_REPLY.pack(
            MAGIC,
            VERSION,
            MessageKind.QUOTE_REPLY,
            request_id,
            Status.OK,
            transmission,
            0,
            quantity,
            item_field,
            unit_price,
            total,
            catalog_version,
        )
    )


def decode_request(data: bytes) -> QuoteRequest:
    """Decode untrusted bytes into a QuoteRequest; raises MalformedDatagram on any defect."""
    request_id = _check_frame(data, MessageKind.QUOTE_REQUEST)
    _, _, _, _, quantity, item, transmission, reserved = _F_REQUEST.unpack_from(data)
    if reserved != _ZERO_RESERVED:
        raise MalformedDatagram("reserved_not_zero", request_id=request_id)
    return QuoteRequest(request_id, _item(item, request_id), quantity, transmission)


def decode_reply(data: bytes) -> QuoteReply:
    """Decode untrusted bytes into a QuoteReply; raises MalformedDatagram on any defect."""
    request_id = _check_frame(data, MessageKind.QUOTE_REPLY)
    _, _, _, _, status, transmission, retry, quantity, item, unit, total, version = _F_REPLY.unpack_from(data)
    if status not in _STATUS:
        raise MalformedDatagram("unknown_status", str(status), request_id=request_id)
    name = "" if item == bytes(ITEM_SIZE) else _item(item, request_id)
    return QuoteReply(request_id, _STATUS[status], name, quantity, unit, total, version, retry, transmission)


def encode_batch_request(req: BatchRequest) -> bytes:
    """Bytes of a batch request. Raises ValueError for values that cannot be encoded."""
    _check_u(req.request_id, 64, "request_id")
    _check_u(req.transmission, 8, "transmission")
    if not 1 <= len(req.lines) <= MAX_BATCH:
        raise ValueError(f"a batch holds 1 to {MAX_BATCH} lines, not {len(req.lines)}")
    parts = [
        _F_BATCH_REQUEST.pack(
            MAGIC, VERSION, MessageKind.BATCH_REQUEST, req.request_id, len(req.lines), req.transmission, b"\0\0"
        )
    ]
    for item, quantity in req.lines:
        _check_u(quantity, 32, "quantity")
        parts.append(_F_BATCH_LINE.pack(quantity, _item_field(item)))
    return _sealed(b"".join(parts))


def encode_batch_reply(rep: BatchReply) -> bytes:
    """Bytes of a batch reply. Raises ValueError for values that cannot be encoded."""
    _check_u(rep.request_id, 64, "request_id")
    _check_u(rep.catalog_version, 32, "catalog_version")
    _check_u(rep.lines_digest, 32, "lines_digest")
    _check_u(rep.retry_after_ms, 16, "retry_after_ms")
    _check_u(rep.transmission, 8, "transmission")
    if len(rep.results) > MAX_BATCH:
        raise ValueError(f"a batch reply holds at most {MAX_BATCH} results")
    parts = [
        _F_BATCH_REPLY.pack(
            MAGIC,
            VERSION,
            MessageKind.BATCH_REPLY,
            rep.request_id,
            int(rep.status),
            len(rep.results),
            rep.retry_after_ms,
            rep.catalog_version,
            rep.lines_digest,
            rep.transmission,
        )
    ]
    for r in rep.results:
        _check_u(r.unit_price, 64, "unit_price")
        _check_u(r.total, 64, "total")
        parts.append(_F_BATCH_RESULT.pack(int(r.status), r.unit_price, r.total))
    return _sealed(b"".join(parts))


def decode_batch_request(data: bytes) -> BatchRequest:
    """Decode untrusted bytes into a BatchRequest; raises MalformedDatagram on any defect."""
    request_id = _check_batch_frame(data, MessageKind.BATCH_REQUEST, BATCH_REQUEST_FIXED, BATCH_REQUEST_LINE, 1)
    count, transmission, reserved = _F_BATCH_REQUEST.unpack_from(data)[4:]
    # Same checks in the same order as the construct reference, so both report the same reason.
    if count > (len(data) - BATCH_REQUEST_FIXED) // BATCH_REQUEST_LINE:
        raise MalformedDatagram("parse_error", "count beyond the datagram", request_id=request_id)
    if reserved != b"\0\0":
        raise MalformedDatagram("reserved_not_zero", request_id=request_id)
    if batch_request_size(count) != len(data):
        raise MalformedDatagram("count_mismatch", request_id=request_id)
    body = memoryview(data)[_F_BATCH_REQUEST.size : -CRC_SIZE]
    lines = tuple((_item(bytes(item), request_id), q) for q, item in _F_BATCH_LINE.iter_unpack(body))
    return BatchRequest(request_id, lines, transmission)


def decode_batch_reply(data: bytes) -> BatchReply:
    """Decode untrusted bytes into a BatchReply; raises MalformedDatagram on any defect."""
    request_id = _check_batch_frame(data, MessageKind.BATCH_REPLY, BATCH_REPLY_FIXED, BATCH_REPLY_LINE, 0)
    status, count, retry, version, digest, transmission = _F_BATCH_REPLY.unpack_from(data)[4:]
    if count > (len(data) - BATCH_REPLY_FIXED) // BATCH_REPLY_LINE:
        raise MalformedDatagram("parse_error", "count beyond the datagram", request_id=request_id)
    if batch_reply_size(count) != len(data):
        raise MalformedDatagram("count_mismatch", request_id=request_id)
    body = memoryview(data)[_F_BATCH_REPLY.size : -CRC_SIZE]
    rows = list(_F_BATCH_RESULT.iter_unpack(body))
    if status not in _STATUS or any(r[0] not in _STATUS for r in rows):
        raise MalformedDatagram("unknown_status", request_id=request_id)
    results = tuple(LineResult(_STATUS[s], unit, total) for s, unit, total in rows)
    if (status == Status.OK) != bool(results):
        raise MalformedDatagram("status_count_mismatch", request_id=request_id)
    return BatchReply(request_id, _STATUS[status], digest, results, version, retry, transmission)


def encode_list_request(req: ListRequest) -> bytes:
    """Bytes of a list request (always LIST_REQUEST_SIZE). Raises ValueError for a bad page number."""
    return _sealed(
        _pack(_F_LIST_REQUEST, MAGIC, VERSION, MessageKind.LIST_REQUEST, req.request_id, req.page, _LIST_RESERVED)
    )


def decode_list_request(data: bytes) -> ListRequest:
    """Decode untrusted bytes into a ListRequest; raises MalformedDatagram on any defect."""
    request_id = _check_frame(data, MessageKind.LIST_REQUEST, LIST_REQUEST_SIZE)
    page, reserved = _F_LIST_REQUEST.unpack_from(data)[4:]
    if reserved != _LIST_RESERVED:
        raise MalformedDatagram("reserved_not_zero", request_id=request_id)
    return ListRequest(request_id, page)


def encode_list_reply(rep: ListReply) -> bytes:
    """Bytes of one catalog page. Raises ValueError for values that cannot be encoded."""
    if len(rep.entries) > LIST_PAGE_SIZE:
        raise ValueError(f"a list page holds at most {LIST_PAGE_SIZE} entries")
    parts = [
        _pack(
            _F_LIST_REPLY,
            MAGIC,
            VERSION,
            MessageKind.LIST_REPLY,
            rep.request_id,
            rep.status,
            len(rep.entries),
            rep.page,
            rep.pages,
            rep.catalog_version,
        )
    ]
    parts += [_pack(_F_LIST_ENTRY, _item_field(item), price) for item, price in rep.entries]
    return _sealed(b"".join(parts))


def decode_list_reply(data: bytes) -> ListReply:
    """Decode untrusted bytes into a ListReply; raises MalformedDatagram on any defect."""
    count, extra = divmod(len(data) - LIST_REPLY_FIXED, LIST_REPLY_ENTRY)
    if len(data) < LIST_REPLY_FIXED or extra or count > LIST_PAGE_SIZE:
        raise MalformedDatagram("bad_length", f"{len(data)} bytes is no valid list page size")
    request_id = _check_frame(data, MessageKind.LIST_REPLY, len(data))
    status, n, page, pages, version = _F_LIST_REPLY.unpack_from(data)[4:]
    if n != count:
        raise MalformedDatagram("count_mismatch", request_id=request_id)
    if status not in _STATUS:
        raise MalformedDatagram("unknown_status", str(status), request_id=request_id)
    body = memoryview(data)[_F_LIST_REPLY.size : -CRC_SIZE]
    entries = tuple((_item(bytes(item), request_id), price) for item, price in _F_LIST_ENTRY.iter_unpack(body))
    return ListReply(request_id, _STATUS[status], page, pages, entries, version)


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
    return _seal(body)


def reference_encode_list_request(req: ListRequest) -> bytes:
    body = LIST_REQUEST_DEF.build(
        {
            "version": VERSION,
            "kind": MessageKind.LIST_REQUEST,
            "request_id": req.request_id,
            "page": req.page,
            "reserved": _LIST_RESERVED,
        }
    )
    return _seal(body)


_REQUEST_DECODERS: dict[int, Callable[[bytes], Request]] = {}
_REPLY_DECODERS: dict[int, Callable[[bytes], Reply]] = {}


def decode_any_request(data: bytes) -> Request:
    """Dispatch on the kind byte; the chosen decoder re-checks everything, CRC first."""
    decoder = _REQUEST_DECODERS.get(data[3]) if len(data) > 3 else None
    return (decoder or decode_request)(data)


def decode_any_reply(data: bytes) -> Reply:
    decoder = _REPLY_DECODERS.get(data[3]) if len(data) > 3 else None
    return (decoder or decode_reply)(data)


_REQUEST_DECODERS.update(
    {MessageKind.BATCH_REQUEST: decode_batch_request, MessageKind.LIST_REQUEST: decode_list_request}
)
_REPLY_DECODERS.update({MessageKind.BATCH_REPLY: decode_batch_reply, MessageKind.LIST_REPLY: decode_list_reply})
