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
magic, version, flag, known key, tag (constant-time compare); the caller then judges the time. The
CRC32 is checked only when one of them fails, to count noise apart from forgeries: a valid tag
proves every byte but the CRC32's own, so a good datagram does not pay for it.
"""

from __future__ import annotations

import hmac
import struct
import zlib
from collections.abc import Mapping
from typing import NamedTuple

from udp_price.auth.keys import Key
from udp_price.wire.framing import KIND_OFFSET
from wire_format import AUTH_FLAG, AUTH_TAG_SIZE, AUTH_TRAILER_SIZE, CRC_SIZE, HEADER_SIZE, MAGIC, VERSION

_SIGNED_FIELDS = struct.Struct(">IQ")
"""key_id and timestamp_ms, the part of AUTH_TRAILER_DEF before the tag (tests prove it identical)."""
_CRC = struct.Struct(">I")
_FINGERPRINT_SIZE = 7
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
    fingerprint: int
    """The tag's first 56 bits: a copy of this datagram has the same, any other datagram (almost
    surely, 2**-56) another. The replay window remembers it."""


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
    inner_pad, outer_pad = key.pads  # _tag(key, body), inlined: this runs per datagram
    h = inner_pad.copy()
    h.update(body)
    o = outer_pad.copy()
    o.update(h.digest())
    tag = o.digest()[:AUTH_TAG_SIZE]
    return body + tag + _CRC.pack(zlib.crc32(tag, zlib.crc32(body)))


def _noise_or(data: bytes, reason: str) -> str:
    """ "bad_checksum" if the datagram's CRC32 is wrong (noise on the path), else ``reason``."""
    return reason if zlib.crc32(data[:-CRC_SIZE]) == _CRC.unpack_from(data, len(data) - CRC_SIZE)[0] else "bad_checksum"


def verify(data: bytes, keys: Mapping[int, Key]) -> tuple[bytes, Key, int, int] | str:
    """(plain datagram, key, timestamp_ms, fingerprint) of an authenticated datagram whose tag is
    valid under one of ``keys``, else the reason it is not (a counter name). The per-datagram
    form of open_signed: no exception and no named tuple on the hot path."""
    size = len(data)
    if size < _MIN_SIZE:
        return "bad_length"
    body_end = size - CRC_SIZE
    tag_at = body_end - AUTH_TAG_SIZE
    signed_part = data[:tag_at]
    tag = data[tag_at:body_end]
    # The CRC32 is checked only when something else fails, to tell noise from a forgery in the
    # counters: a valid tag proves every byte, so a good datagram skips it.
    if data[:KIND_OFFSET] != _MAGIC_VERSION or not data[KIND_OFFSET] & AUTH_FLAG:
        return _noise_or(data, "bad_header")
    trailer_at = body_end - AUTH_TRAILER_SIZE
    key_id, timestamp_ms = _SIGNED_FIELDS.unpack_from(data, trailer_at)
    key = keys.get(key_id)
    if key is None:
        return _noise_or(data, "unknown_key")
    inner_pad, outer_pad = key.pads  # _tag(key, signed_part), inlined: this runs per datagram
    h = inner_pad.copy()
    h.update(signed_part)
    o = outer_pad.copy()
    o.update(h.digest())
    if not hmac.compare_digest(o.digest()[:AUTH_TAG_SIZE], tag):
        return _noise_or(data, "bad_tag")
    inner = data[:KIND_OFFSET] + _BYTE[data[KIND_OFFSET] & _CLEAR_AUTH] + data[KIND_OFFSET + 1 : trailer_at]
    fingerprint = int.from_bytes(tag[:_FINGERPRINT_SIZE], "big")
    return inner + _CRC.pack(zlib.crc32(inner)), key, timestamp_ms, fingerprint


def open_signed(data: bytes, keys: Mapping[int, Key]) -> Signed:
    """The plain datagram inside an authenticated one whose tag is valid under one of ``keys``;
    AuthFailure otherwise. The timestamp is returned, not judged: that needs a clock."""
    verified = verify(data, keys)
    if isinstance(verified, str):
        raise AuthFailure(verified)
    inner, key, timestamp_ms, fingerprint = verified
    return Signed(inner, key.key_id, timestamp_ms, fingerprint)
