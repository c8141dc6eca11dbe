"""Messages and helpers shared by the tests/test_core_mutants_*.py files."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from typing import Any

from udp_price.wire import (
    BatchReply,
    BatchRequest,
    LineResult,
    ListReply,
    ListRequest,
    QuoteReply,
    QuoteRequest,
    Status,
)

QUOTE_REQUEST = QuoteRequest(1, "apple", 3, transmission=2)
QUOTE_REPLY = QuoteReply(1, Status.OK, "apple", 3, 50, 150, 7, 0, 2)
BATCH_REQUEST = BatchRequest(1, (("apple", 3), ("pear", 2)), transmission=2)
BATCH_REPLY = BatchReply(1, Status.OK, 99, (LineResult(Status.OK, 50, 150), LineResult(Status.OK, 55, 110)), 7, 0, 2)
LIST_REQUEST = ListRequest(1, 3, "ap")
LIST_REPLY = ListReply(1, Status.OK, 3, 5, (("apple", 50), ("apricot", 120)), 7)

Encoder = Callable[[Any], bytes]
Decoder = Callable[[bytes], Any]


def reseal(data: bytes, offset: int, new: bytes) -> bytes:
    body = bytearray(data[:-4])
    body[offset : offset + len(new)] = new
    return bytes(body) + struct.pack(">I", zlib.crc32(bytes(body)))
