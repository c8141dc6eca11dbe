"""The udp-price byte layout: every message is one UDP datagram, defined here with construct.

construct is the single definition of the byte layout. Each message is a
construct ``Struct`` for everything before the trailing CRC32; the CRC32 (zlib
polynomial, big-endian) over those bytes is appended outside construct because
``Checksum`` does not compile. This module holds only the layout: the Structs and
the constants. The message types and both codecs live in ``udp_price.wire``
(the fast codec derives its struct formats from these Structs at import time;
the construct reference codec is the test oracle).

Requests and replies have the same size, so a reply is never larger than the
request that caused it: the service cannot amplify traffic.
"""

from __future__ import annotations

from construct import Array, Bytes, Const, Int8ub, Int16ub, Int32ub, Int64ub, Struct, this

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
REQUEST_RESERVED = 23
"""Zero bytes at the end of a quote request body."""
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
"""Catalog entries per list page: 30 + 40 * 16 = 670 bytes, so a list request is padded to 670."""
LIST_REPLY_FIXED = 30
LIST_REPLY_ENTRY = 40
LIST_REQUEST_SIZE = LIST_REPLY_FIXED + LIST_REPLY_ENTRY * LIST_PAGE_SIZE
PREFIX_SIZE = ITEM_SIZE
"""Bytes of the NUL-padded UTF-8 prefix in a list request: all zero lists the whole catalog."""
MAX_LIST_PAGE = 2**32 - 1
"""Page numbers and page counts are u32: 16 x 4,294,967,295 items, far beyond any catalog."""
LIST_REQUEST_RESERVED = LIST_REQUEST_SIZE - HEADER_SIZE - 4 - PREFIX_SIZE - CRC_SIZE
"""Zero bytes that pad a list request to the size of the largest page, so a listing never amplifies."""

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
    "reserved" / Bytes(REQUEST_RESERVED),
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
    "page" / Int32ub,
    # Only items whose name starts with these UTF-8 bytes are listed (NUL-padded; all zero: every item).
    "prefix" / Bytes(PREFIX_SIZE),
    # Pads the request to the size of the largest page, so a listing never amplifies; must be zero.
    "reserved" / Bytes(LIST_REQUEST_RESERVED),
)
_LIST_ENTRY = Struct("item" / Bytes(ITEM_SIZE), "unit_price" / Int64ub)
LIST_REPLY_DEF = Struct(
    *_HEADER,
    "status" / Int8ub,
    "count" / Int8ub,
    "page" / Int32ub,
    "pages" / Int32ub,  # page count of this listing (of the items matching the prefix)
    "catalog_version" / Int32ub,
    "entries" / Array(this.count, _LIST_ENTRY),
)

# ---------------------------------------------------------------- authentication (flag 0x80)
# The kind byte (offset 3) keeps the message kind in its low 6 bits; the two high bits are flags.
KIND_MASK = 0x3F
FLAGS_MASK = 0xC0
AUTH_FLAG = 0x80
"""Set in the kind byte of a datagram that carries AUTH_TRAILER_DEF between its body and its CRC32."""
AUTH_TAG_SIZE = 16
"""HMAC-SHA256 truncated to its first 128 bits, the shortest RFC 8945 section 5.2.2.1 allows for
a 256-bit hash (half its length)."""
AUTH_WINDOW_S = 300
"""Seconds a signed timestamp may differ from the receiver's clock: TSIG's recommended fudge (RFC 8945 section 10)."""
AUTH_TRAILER_DEF = Struct(
    "key_id" / Int32ub,  # which shared secret signed this (the keys file's first column)
    "timestamp_ms" / Int64ub,  # sender's Unix time in milliseconds
    # HMAC-SHA256(secret, every byte before the tag: header with the flag set, body, key_id, timestamp)[:16]
    "tag" / Bytes(AUTH_TAG_SIZE),
)
AUTH_TRAILER_SIZE = 4 + 8 + AUTH_TAG_SIZE
"""Bytes an authenticated datagram adds to the message it carries (before the CRC32, which
still covers everything before it: the seal's rule is unchanged)."""
