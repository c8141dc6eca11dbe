"""The one validation of item names and quantities, used by every caller: the client, bulk, the
quote page, the catalog, both codecs and the server.

Items: a name is compared in NFC with outer spaces stripped (``normalize_item``), so 'café' matches
however it was typed; on the wire it is at most ITEM_SIZE (32) bytes of UTF-8 with no NUL
(``encode_item`` refuses anything else with BadItem, a ValueError).

Quantities: the one rule, shared by ``quote``, ``bulk``, the quote page and the Python API.

A quantity is a whole number from 1 to MAX_QUANTITY (1,000,000,000), written as 1 to 10 ASCII
digits. Spaces around it are ignored; a sign, a decimal point, an exponent, thousands separators
or any other character make it invalid. A quantity that breaks the rule is rejected before any
request is sent: ``quote`` exits 2, a bulk row becomes BAD_ROW, the page shows "Bad quantity",
and the Python API raises ``ValueError``.

The length is checked before the digits are converted, so a 5,000-digit "quantity" costs no more
than a short one and never reaches Python's int() digit limit.
"""

from __future__ import annotations

import unicodedata

from udp_price.errors import BadItem, BadQuantity, MalformedDatagram
from wire_format import ITEM_SIZE, MAX_QUANTITY, PREFIX_SIZE

MAX_DIGITS = len(str(MAX_QUANTITY))
"""Digits in the largest valid quantity (10); longer text is rejected without converting it."""


def parse_quantity(text: str) -> int:
    """``text`` as a quantity, or BadQuantity whose message says why (and quotes at most 20 characters)."""
    stripped = text.strip(" \t")
    shown = _shown(stripped)
    if len(stripped) > MAX_DIGITS:
        raise BadQuantity(f"quantity {shown} has {len(stripped):,} characters; at most {MAX_DIGITS} digits allowed")
    if not stripped.isascii() or not stripped.isdigit():
        raise BadQuantity(f"quantity {shown} is not a whole number from 1 to {MAX_QUANTITY}")
    return check_quantity(int(stripped))


def check_quantity(quantity: int) -> int:
    """``quantity`` itself when it follows the rule, else BadQuantity (the Python API's check)."""
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        raise BadQuantity(f"quantity must be an int, got {type(quantity).__name__}")
    if not 1 <= quantity <= MAX_QUANTITY:
        shown = str(quantity) if -(10**20) < quantity < 10**20 else "with more than 20 digits"
        raise BadQuantity(f"quantity {shown} is out of range: a whole number from 1 to {MAX_QUANTITY}")
    return quantity


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 20 else repr(text[:20] + "...")


def normalize_item(name: str) -> str:
    """The canonical form of an item name: NFC, so 'café' matches however it was typed."""
    return unicodedata.normalize("NFC", name.strip())


def item_problem(item: str) -> str | None:
    """Why the (normalized) name ``item`` cannot go on the wire, or None when it can: the one
    item rule, worded the same for the client, bulk rows, the catalog and the encoder."""
    size = len(item.encode("utf-8"))
    if size > ITEM_SIZE:
        return f"item is {size:,} bytes in UTF-8; the wire field holds {ITEM_SIZE}"
    if not item:
        return "missing item"
    if "\0" in item:
        return "item contains NUL"
    return None


def encode_item(name: str) -> bytes:
    """UTF-8 item name, NUL-padded to ITEM_SIZE. Raises BadItem (a ValueError) if it cannot go on the wire."""
    item = normalize_item(name)
    problem = item_problem(item)
    if problem is not None:
        raise BadItem(problem)
    return item.encode("utf-8").ljust(ITEM_SIZE, b"\0")


def decode_item(raw: bytes, request_id: int) -> str:
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


def normalize_prefix(text: str) -> str:
    """A search prefix as names are compared: NFC, leading spaces dropped (names have none); a
    trailing space is kept, since it may be part of the name ("café " matches "café crème")."""
    return unicodedata.normalize("NFC", text.lstrip())


def encode_prefix(prefix: str) -> bytes:
    """UTF-8 prefix NUL-padded to PREFIX_SIZE ('' is all zeros: no filter). Raises BadItem
    (a ValueError) for one longer than the field or holding a NUL."""
    data = prefix.encode("utf-8")
    if len(data) > PREFIX_SIZE:
        raise BadItem(f"prefix is {len(data):,} bytes in UTF-8; the wire field holds {PREFIX_SIZE}")
    if b"\0" in data:
        raise BadItem("prefix contains NUL")
    return data.ljust(PREFIX_SIZE, b"\0")


def decode_prefix(raw: bytes, request_id: int) -> str:
    """The prefix in a list request's field: UTF-8 (possibly empty), no NUL before the padding."""
    data = raw.rstrip(b"\0")
    if b"\0" in data:
        raise MalformedDatagram("nul_in_prefix", request_id=request_id)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MalformedDatagram("bad_utf8", str(e), request_id=request_id) from e
