"""The one rule for quantities, shared by ``quote``, ``bulk``, the quote page and the Python API.

A quantity is a whole number from 1 to MAX_QUANTITY (1,000,000,000), written as 1 to 10 ASCII
digits. Spaces around it are ignored; a sign, a decimal point, an exponent, thousands separators
or any other character make it invalid. A quantity that breaks the rule is rejected before any
request is sent: ``quote`` exits 2, a bulk row becomes BAD_ROW, the page shows "Bad quantity",
and the Python API raises ``ValueError``.

The length is checked before the digits are converted, so a 5,000-digit "quantity" costs no more
than a short one and never reaches Python's int() digit limit.
"""

from __future__ import annotations

from wire_format import MAX_QUANTITY

MAX_DIGITS = len(str(MAX_QUANTITY))
"""Digits in the largest valid quantity (10); longer text is rejected without converting it."""


class BadQuantity(ValueError):
    """The quantity breaks the rule: a whole number from 1 to 1,000,000,000."""


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
