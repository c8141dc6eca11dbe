"""Load and validate catalog.csv into an immutable catalog; money as integer minor units.

The CSV has a header row with the columns ``item`` and ``price`` (others are
ignored). Prices are decimal strings with at most two decimals ("0.50", "3",
"12.5"); in memory they are integer cents. Every problem in the file is
reported with its line number, all at once, so an operator fixes the file in
one pass.
"""

from __future__ import annotations

import csv
import io
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType

from wire_format import ITEM_SIZE, LIST_PAGE_SIZE, MAX_TOTAL, QuoteError, normalize_item

MINOR_UNITS = 100
"""Minor units per major unit: prices are exact integer cents."""
MAX_PRICE = 10**15
"""Largest unit price in minor units (10 trillion); keeps catalogs sane, totals still can overflow."""
MAX_LIST_PAGES = 2**16 - 1
"""The list reply's page-count field is a u16."""
MAX_ITEMS = LIST_PAGE_SIZE * MAX_LIST_PAGES
"""1,048,560: more items would need a page count the list reply cannot carry."""
MAX_WIRE_PRICE = 2**64 - 1
"""Unit prices travel in u64 fields."""
_PRICE_RE = re.compile(r"^\d+(\.\d+)?$")


class CatalogError(QuoteError):
    """The catalog file is unusable; ``problems`` lists every defect as 'line N: what'."""

    def __init__(self, path: str, problems: list[str]) -> None:
        super().__init__(f"{path}: {len(problems)} problem(s): " + "; ".join(problems))
        self.path = path
        self.problems = problems


@dataclass(frozen=True)
class Catalog:
    """Item name (NFC) -> unit price in minor units, plus a version that changes with the content."""

    prices: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    version: int = 0

    @classmethod
    def from_prices(cls, prices: Mapping[str, int]) -> Catalog:
        frozen = MappingProxyType(dict(prices))
        return cls(prices=frozen, version=_content_version(frozen))

    def __len__(self) -> int:
        return len(self.prices)


def _content_version(prices: Mapping[str, int]) -> int:
    # CRC32 of the canonical content: reloading an unchanged file keeps the version.
    canonical = "\n".join(f"{k}\t{v}" for k, v in sorted(prices.items()))
    return zlib.crc32(canonical.encode("utf-8"))


def parse_price(text: str) -> int:
    """'12.50' -> 1250. Raises ValueError with a readable reason for anything else."""
    text = text.strip()
    if not text:
        raise ValueError("price is empty")
    if text.startswith("-"):
        raise ValueError(f"price {text!r} is negative")
    if not _PRICE_RE.match(text):
        raise ValueError(f"price {text!r} is not a decimal number like 12.50")
    if "." in text and len(text.split(".", 1)[1]) > 2:
        raise ValueError(f"price {text!r} has more than 2 decimals")
    cents = int(Decimal(text) * MINOR_UNITS)
    if cents > MAX_PRICE:
        raise ValueError(f"price {text!r} is above the maximum {format_money(MAX_PRICE)}")
    return cents


def format_money(minor: int) -> str:
    """1250 -> '12.50'. Exact: integer arithmetic only."""
    sign = "-" if minor < 0 else ""
    major, cents = divmod(abs(minor), MINOR_UNITS)
    return f"{sign}{major}.{cents:02d}"


def parse_catalog(text: str, path: str = "<catalog>") -> Catalog:
    """Validate CSV text into a Catalog; raises CatalogError listing every problem."""
    problems: list[str] = []
    prices: dict[str, int] = {}
    first_line: dict[str, int] = {}
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise CatalogError(path, ["line 1: file is empty; expected a header 'item,price'"])
        columns = [h.strip().lower() for h in header]
        if "item" not in columns or "price" not in columns:
            raise CatalogError(path, [f"line 1: header must name 'item' and 'price' columns, got {header}"])
        item_col, price_col = columns.index("item"), columns.index("price")
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue  # blank lines are harmless
            problem = _check_row(row, item_col, price_col, prices, first_line, line)
            if problem:
                problems.append(f"line {line}: {problem}")
    except csv.Error as e:
        problems.append(f"line {reader.line_num}: broken CSV: {e}")
    if not prices and not problems:
        problems.append("no items: the catalog must list at least one")
    problems += wire_limit_problems(prices)
    if problems:
        raise CatalogError(path, problems)
    return Catalog.from_prices(prices)


def _check_row(
    row: list[str], item_col: int, price_col: int, prices: dict[str, int], first_line: dict[str, int], line: int
) -> str | None:
    """Add one row to ``prices``; return a problem description instead if it is bad."""
    if len(row) <= max(item_col, price_col):
        return f"expected at least {max(item_col, price_col) + 1} columns, got {len(row)}"
    item = normalize_item(row[item_col])
    if not item:
        return "item name is empty"
    if "\0" in item:
        return "item name contains NUL"
    size = len(item.encode("utf-8"))
    if size > ITEM_SIZE:
        return f"item {item!r} is {size} bytes in UTF-8; the wire field holds {ITEM_SIZE}"
    if item in first_line:
        return f"duplicate item {item!r} (first on line {first_line[item]})"
    first_line[item] = line  # even if its price is bad: a second row of it is still a duplicate
    try:
        price = parse_price(row[price_col])
    except ValueError as e:
        return f"item {item!r}: {e}"
    prices[item] = price
    return None


def wire_limit_problems(prices: Mapping[str, int]) -> list[str]:
    """Whatever in ``prices`` the wire format cannot carry, one sentence naming the limit each.

    Checked at every load and reload, so a catalog that loads can be served in full: no request
    meets a value that does not fit its field. (Name size is checked per row by parse_catalog.)"""
    problems = []
    if len(prices) > MAX_ITEMS:
        problems.append(
            f"{len(prices):,} items; at most {MAX_ITEMS:,} fit the list messages "
            f"({LIST_PAGE_SIZE} a page, page count in a 16-bit field: {MAX_LIST_PAGES:,} pages)"
        )
    too_big = [item for item, price in prices.items() if not 0 <= price <= MAX_WIRE_PRICE]
    if too_big:
        problems.append(f"{len(too_big)} price(s) do not fit the 64-bit price field, e.g. {too_big[0]!r}")
    return problems


def load_catalog(path: str | Path) -> Catalog:
    """Read and validate a catalog file; raises CatalogError (also for unreadable files)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise CatalogError(str(path), [f"cannot read: {e}"]) from e
    return parse_catalog_bytes(raw, str(path))


def parse_catalog_bytes(raw: bytes, path: str = "<catalog>") -> Catalog:
    """Validate the bytes of a catalog file (UTF-8, optional BOM); raises CatalogError."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CatalogError(path, [f"cannot read: {e}"]) from e
    return parse_catalog(text, path)


def price_total(unit_price: int, quantity: int) -> int | None:
    """Exact total in minor units, or None if it exceeds MAX_TOTAL."""
    total = unit_price * quantity
    return total if total <= MAX_TOTAL else None
