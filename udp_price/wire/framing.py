"""Framing shared by both codecs and the server: the seal (trailing CRC32), the frame checks run
before anything is parsed, the stable header every version shares, and the one range check for
numeric fields.

Untrusted bytes are checked in this order: exact length, then CRC32 (the version-independent
seal, see ``is_sealed``), then magic, version and kind; only then is the body parsed.
"""

from __future__ import annotations

import zlib

from udp_price.errors import EncodeError, MalformedDatagram, UnsupportedVersion
from udp_price.wire.messages import MessageKind
from wire_format import (
    BATCH_REQUEST_FIXED,
    CRC_SIZE,
    HEADER_SIZE,
    MAGIC,
    MAX_BATCH,
    MESSAGE_SIZE,
    REQUEST_RESERVED,
    VERSION,
)

ZERO_RESERVED = bytes(REQUEST_RESERVED)
KIND_OFFSET = 3
"""Byte offset of the message kind in every version's header (magic 0-1, version 2, kind 3)."""
REPLY_STATUS_OFFSET = 12
"""Byte offset of the status byte in every reply, right after the 12-byte header."""


def check_unsigned(value: int, bits: int, field: str) -> None:
    """The one range check for numeric fields: EncodeError (a ValueError) naming the field."""
    if not 0 <= value < 2**bits:
        raise EncodeError(f"{field}={value} does not fit in an unsigned {bits}-bit field")


def seal(body: bytes) -> bytes:
    """The datagram for ``body``: the body, then the CRC32 of the body, big-endian."""
    return body + zlib.crc32(body).to_bytes(CRC_SIZE, "big")


def kind_of(data: bytes) -> int | None:
    """The kind byte of a datagram long enough to carry one, else None."""
    return data[KIND_OFFSET] if len(data) > KIND_OFFSET else None


def check_frame(data: bytes, kind: MessageKind, size: int = MESSAGE_SIZE) -> int:
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


def _lines_bytes(data: bytes) -> bytes:
    return data[BATCH_REQUEST_FIXED - CRC_SIZE : -CRC_SIZE]


def lines_digest(request_datagram: bytes) -> int:
    """The digest a batch reply must carry for this encoded batch request."""
    return zlib.crc32(_lines_bytes(request_datagram))


def check_batch_frame(data: bytes, kind: MessageKind, fixed: int, per_line: int, min_count: int) -> int:
    """Like check_frame for variable-length batches: the length must be fixed + per_line * count."""
    count, extra = divmod(len(data) - fixed, per_line)
    if len(data) < fixed or extra or not min_count <= count <= MAX_BATCH:
        raise MalformedDatagram("bad_length", f"{len(data)} bytes is no valid batch size")
    return check_frame(data, kind, len(data))


# ---------------------------------------------------------------- the OVERLOADED flag (issue 19)

KIND_MASK = 0x3F
"""The kind byte keeps the message kind in its low 6 bits; the two high bits are flags."""
FLAG_OVERLOADED = 0x40
"""Set by the server in a reply while it is overloaded (an explicit congestion mark, as ECN-CE,
RFC 3168). Never valid in a request: a request carrying it is malformed and never answered."""


def mark_overloaded(reply: bytes) -> bytes:
    """``reply`` (a sealed datagram) with the OVERLOADED flag set and the seal renewed: what an
    on-path party can do to an unsigned reply. The server never uses it: it sets the flag as it
    encodes a reply (the encoders' ``flags``), at no extra copy, and before a signature that then
    covers it; a signed reply marked afterwards fails its tag."""
    body = bytearray(reply[:-CRC_SIZE])
    body[KIND_OFFSET] |= FLAG_OVERLOADED
    return seal(bytes(body))


def split_overload_mark(data: bytes) -> tuple[bytes, bool]:
    """(the datagram without the OVERLOADED flag, whether it carried it). Only an intact datagram
    (its seal checked first) loses the flag: a corrupted one is returned as it came, so renewing
    the seal can never turn noise into a valid reply."""
    if len(data) <= KIND_OFFSET or not data[KIND_OFFSET] & FLAG_OVERLOADED or not is_sealed(data):
        return data, False
    body = bytearray(data[:-CRC_SIZE])
    body[KIND_OFFSET] &= ~FLAG_OVERLOADED & 0xFF
    return seal(bytes(body)), True
