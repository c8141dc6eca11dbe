"""Transmission numbers on encoded requests: a client encodes each request once and, for every
datagram it sends, changes the one transmission byte and recomputes the seal, instead of
encoding the whole request again (tests/test_fast_codec.py checks the bytes are identical)."""

from __future__ import annotations

import dataclasses
import re
import struct

from udp_price.wire.codec import _F_BATCH_REQUEST, _F_REQUEST, encode_batch_request, encode_request
from udp_price.wire.framing import KIND_OFFSET, check_unsigned, seal
from udp_price.wire.lists import encode_list_request
from udp_price.wire.messages import BatchRequest, MessageKind, QuoteRequest, Request
from udp_price.wire.structs import _FIELD_NAMES
from wire_format import CRC_SIZE


def _field_offset(fmt: struct.Struct, field: str) -> int:
    """Byte offset of ``field`` in one of the codec's derived formats."""
    codes = re.findall(r"\d*[a-zA-Z]", fmt.format[1:])
    return struct.calcsize(">" + "".join(codes[: _FIELD_NAMES[fmt.format].index(field)]))


_TRANSMISSION_OFFSET = {
    MessageKind.QUOTE_REQUEST: _field_offset(_F_REQUEST, "transmission"),
    MessageKind.BATCH_REQUEST: _field_offset(_F_BATCH_REQUEST, "transmission"),
}


def encode_unnumbered(request: Request) -> bytes:
    """``request`` encoded as transmission 0 (EncodeError, a ValueError, if it cannot be)."""
    if isinstance(request, QuoteRequest):
        return encode_request(dataclasses.replace(request, transmission=0) if request.transmission else request)
    if isinstance(request, BatchRequest):
        return encode_batch_request(dataclasses.replace(request, transmission=0) if request.transmission else request)
    return encode_list_request(request)


def renumbered(request_datagram: bytes, transmission: int) -> bytes:
    """An encoded quote or batch request as its transmission number ``transmission``: that one
    byte changed and the seal recomputed (the bytes equal encoding it with that transmission)."""
    check_unsigned(transmission, 8, "transmission")
    body = bytearray(request_datagram[:-CRC_SIZE])
    body[_TRANSMISSION_OFFSET[MessageKind(request_datagram[KIND_OFFSET])]] = transmission
    return seal(bytes(body))
