"""The catalog parser's fast path: a well-formed catalog of a million items indexed in about a second.

The exact parser (udp_price.catalog.parse_catalog) checks row by row in Python, about 3 us a row.
Here every step runs over whole chunks of rows in C (str.split, map over C functions, set, sort,
array slicing), so a row costs a fraction of that. It accepts only what the exact parser accepts
and gives the same result; anything unusual - a quote character, a lone CR, a row with another
number of columns, a bad or duplicate name, a price it does not recognise, a line longer than the
csv module's field size limit (131,072 characters unless changed) - returns None, and the caller
runs the exact parser, which then reports every problem with its line number.
"""

from __future__ import annotations

import csv
import struct
import unicodedata
from itertools import islice, repeat

from udp_price.catalog_index import CatalogIndex
from wire_format import ITEM_SIZE

_CHUNK = 65_536
"""Rows handled per step: bounds the temporary objects (a few MB) whatever the catalog's size."""
_MAX_WHOLE_DIGITS = 16
"""Longer integer parts are left to the exact parser (its limit check names the maximum)."""


def parse_fast(text: str, max_price: int, max_items: int) -> CatalogIndex | None:
    """The index of a plain catalog (header naming 'item' and 'price', one item a line, no quoting),
    or None when the exact parser must look at it."""
    if '"' in text or "\0" in text:
        return None
    if "\r" in text:
        text = text.replace("\r\n", "\n")
        if "\r" in text:
            return None
    lines = text.split("\n")
    if max(map(len, lines)) > csv.field_size_limit():
        # The exact parser (the csv module) refuses a field longer than this limit; a line this long
        # may hold one, so the exact parser decides (and names the line). Same limit, same verdict.
        return None
    columns = [c.strip().lower() for c in lines[0].split(",")]
    if "item" not in columns or "price" not in columns:
        return None
    item_col, price_col, width = columns.index("item"), columns.index("price"), len(columns)
    fields: list[bytes] = []
    cents: list[int] = []
    known: dict[str, int] = {}
    body = iter(lines[1:])
    while chunk := list(filter(None, islice(body, _CHUNK))):  # blank lines are harmless
        if not _add_chunk(chunk, width, item_col, price_col, known, max_price, fields, cents):
            return None
        if len(fields) > max_items:
            return None
    return _sorted_index(fields, cents) if fields else None


def _add_chunk(
    lines: list[str],
    width: int,
    item_col: int,
    price_col: int,
    known: dict[str, int],
    max_price: int,
    fields: list[bytes],
    cents: list[int],
) -> bool:
    if set(map(str.count, lines, repeat(","))) != {width - 1}:
        return False  # some row has another number of columns
    cells = ",".join(lines).split(",")
    names = list(map(str.strip, cells[item_col::width]))
    if not "".join(names).isascii() and not all(map(_is_nfc, names)):
        return False  # ASCII is NFC already; otherwise every name must be NFC as it stands
    try:
        encoded = list(map(str.encode, names))
    except UnicodeEncodeError:
        return False
    if min(map(len, encoded)) < 1 or max(map(len, encoded)) > ITEM_SIZE:
        return False
    if len(set(encoded)) < len(encoded):
        return False  # a duplicate: found now rather than after holding every row (a bad file costs less)
    prices = list(map(str.strip, cells[price_col::width]))
    for text in set(prices).difference(known):
        price = fast_price(text)
        if price is None or price > max_price:
            return False
        known[text] = price
    fields += encoded
    cents += map(known.__getitem__, prices)
    return True


def _is_nfc(name: str) -> bool:
    return unicodedata.is_normalized("NFC", name)


def fast_price(text: str) -> int | None:
    """'12.50' -> 1250 for plain ASCII decimals with at most two decimals; None for anything else."""
    whole, dot, frac = text.partition(".")
    if not (whole.isascii() and whole.isdigit()) or len(whole) > _MAX_WHOLE_DIGITS:
        return None
    if dot and not (frac.isascii() and frac.isdigit() and len(frac) <= 2):
        return None
    return int(whole) * 100 + (int(frac.ljust(2, "0")) if frac else 0)


def _sorted_index(fields: list[bytes], cents: list[int]) -> CatalogIndex | None:
    # Names hold no NUL, so unpadded UTF-8 sorts exactly as the padded wire fields do. Strictly
    # increasing after the sort means no duplicates (the exact parser names them).
    if not _strictly_increasing(fields):
        order = sorted(range(len(fields)), key=fields.__getitem__)
        fields = list(map(fields.__getitem__, order))
        cents = list(map(cents.__getitem__, order))
        if not _strictly_increasing(fields):
            return None
    # struct's "32s" NUL-pads each field: one C call per chunk.
    padded = b"".join(
        struct.pack(f"{ITEM_SIZE}s" * len(part), *part)
        for part in (fields[i : i + _CHUNK] for i in range(0, len(fields), _CHUNK))
    )
    return CatalogIndex.from_sorted_fields(padded, cents)


def _strictly_increasing(fields: list[bytes]) -> bool:
    return all(map(bytes.__lt__, fields, islice(fields, 1, None)))
