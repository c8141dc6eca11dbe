"""The signed trailer: how an authenticated datagram is made from a plain one, and back.

An authenticated datagram is the plain message with AUTH_FLAG (0x80) set in its kind byte, then
AUTH_TRAILER_DEF (key id u32, timestamp u64 ms, 16-byte tag), then the CRC32 of everything before
it, so the seal's rule (the last 4 bytes are the CRC32 of the rest) holds unchanged. The tag is
HMAC-SHA256 under the key over every byte before the tag, truncated to 128 bits, as DNS TSIG
(RFC 8945 section 4.3) signs the whole message with its time. Every byte, the OVERLOADED bit
(0x40) of the kind byte included: the server decides the mark before it encodes and signs a reply,
so the mark is authenticated too. A mark set on the path fails the tag, and the reply is dropped
like any forgery: an on-path party can then do no more than drop replies, which a client's
congestion control does not take for congestion. Checks run cheapest first: length,
CRC32, magic, version, flag, known key, tag (constant-time compare); the caller then judges the time.
"""

from __future__ import annotations

import hmac
import struct
import zlib
from collections.abc import Mapping
from typing import NamedTuple

from udp_price.auth.keys import Key
from udp_price.wire import seal
from udp_price.wire.framing import KIND_OFFSET
from wire_format import AUTH_FLAG, AUTH_TAG_SIZE, AUTH_TRAILER_SIZE, CRC_SIZE, HEADER_SIZE, MAGIC, VERSION

_SIGNED_FIELDS = struct.Struct(">IQ")
"""key_id and timestamp_ms, the part of AUTH_TRAILER_DEF before the tag (tests prove it identical)."""
_CRC = struct.Struct(">I")
_MIN_SIZE = HEADER_SIZE + AUTH_TRAILER_SIZE + CRC_SIZE
_MAGIC_VERSION = MAGIC + bytes((VERSION,))
_CLEAR_AUTH = 0xFF ^ AUTH_FLAG
_BYTE = [bytes((value,)) for value in range(256)]
"""One-byte bytes objects by value: rebuilding a datagram around a changed kind byte by slicing
and concatenation is cheaper than going through a bytearray."""


class AuthFailure(Exception):
    """A datagram that fails authentication; ``reason`` is the counter name (never sent anywhere)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Signed(NamedTuple):
    """A datagram whose tag checked out: the plain datagram it carries, and who signed it when."""

    inner: bytes
    key_id: int
    timestamp_ms: int


def is_signed(data: bytes) -> bool:
    """True if the kind byte carries the AUTH flag (nothing is verified yet)."""
    return len(data) > KIND_OFFSET and bool(data[KIND_OFFSET] & AUTH_FLAG)


def _tag(key: Key, signed_bytes: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104) from the key's precomputed pad states: the same bytes as
    hmac.digest(secret, data, "sha256"), at about half the cost for a short message."""
    inner, outer = key.pads
    h = inner.copy()
    h.update(signed_bytes)
    o = outer.copy()
    o.update(h.digest())
    return o.digest()[:AUTH_TAG_SIZE]


def sign(datagram: bytes, key: Key, timestamp_ms: int) -> bytes:
    """The authenticated form of a sealed plain ``datagram`` (its CRC32 is replaced, not checked)."""
    body = (
        datagram[:KIND_OFFSET]
        + _BYTE[datagram[KIND_OFFSET] | AUTH_FLAG]
        + datagram[KIND_OFFSET + 1 : -CRC_SIZE]
        + _SIGNED_FIELDS.pack(key.key_id, timestamp_ms)
    )
    return seal(body + _tag(key, body))


def open_signed(data: bytes, keys: Mapping[int, Key]) -> Signed:
    """The plain datagram inside an authenticated one whose tag is valid under one of ``keys``;
    AuthFailure otherwise. The timestamp is returned, not judged: that needs a clock."""
    size = len(data)
    if size < _MIN_SIZE:
        raise AuthFailure("bad_length")
    body_end = size - CRC_SIZE
    tag_at = body_end - AUTH_TAG_SIZE
    signed_part = data[:tag_at]
    if zlib.crc32(data[tag_at:body_end], zlib.crc32(signed_part)) != _CRC.unpack_from(data, body_end)[0]:
        raise AuthFailure("bad_checksum")
    if data[:3] != _MAGIC_VERSION or not data[KIND_OFFSET] & AUTH_FLAG:
        raise AuthFailure("bad_header")
    trailer_at = body_end - AUTH_TRAILER_SIZE
    key_id, timestamp_ms = _SIGNED_FIELDS.unpack_from(data, trailer_at)
    key = keys.get(key_id)
    if key is None:
        raise AuthFailure("unknown_key")
    if not hmac.compare_digest(_tag(key, signed_part), data[tag_at:body_end]):
        raise AuthFailure("bad_tag")
    inner = data[:KIND_OFFSET] + _BYTE[data[KIND_OFFSET] & _CLEAR_AUTH] + data[KIND_OFFSET + 1 : trailer_at]
    return Signed(seal(inner), key_id, timestamp_ms)
