"""Load and validate catalog.csv into an immutable catalog; money as integer minor units.

The CSV has a header row with the columns ``item`` and ``price`` (others are
ignored). Prices are decimal strings with at most two decimals ("0.50", "3",
"12.5"); in memory they are integer cents. Every problem in the file is
reported with its line number, all at once, so an operator fixes the file in
one pass.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import stat
import sys
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from types import MappingProxyType

from udp_price.catalog_fast import parse_fast
from udp_price.catalog_index import CatalogIndex, IndexedPrices, field_name
from udp_price.errors import CatalogError
from udp_price.wire.items import encode_item, item_problem, normalize_item
from wire_format import MAX_TOTAL

MINOR_UNITS = 100
"""Minor units per major unit: prices are exact integer cents."""
MAX_PRICE = 10**15
"""Largest unit price in minor units (10 trillion); keeps catalogs sane, totals still can overflow."""
MAX_ITEMS = 10_000_000
"""Most items a catalog may hold: the index costs 40 bytes an item (400 MB at the limit), and a
catalog this big takes seconds to parse. The list messages carry far more (page numbers are u32:
16 x 4,294,967,295 items), so this is a memory policy, not a wire limit."""
MAX_WIRE_PRICE = 2**64 - 1
"""Unit prices travel in u64 fields."""
MAX_CATALOG_BYTES = 1024 * 1024 * 1024
"""1 GiB: a catalog file larger than this is refused unread. The largest catalog allowed (10,000,000
items with 32-byte names, quoted, and 16-digit prices) is under 1 GB; anything bigger is a mistake or
an attack (a sparse file, a symlink to a device) and would cost seconds and gigabytes to parse."""
_LITTLE_ENDIAN = sys.byteorder == "little"
_HASH_CHUNK = 65_536
"""Items formatted and hashed per step when the catalog version is computed."""
_PRICE_RE = re.compile(r"^\d+(\.\d+)?$")


@dataclass(frozen=True)
class Catalog:
    """Item name (NFC) -> unit price in minor units, plus a version that changes with the content.

    Everything serving needs (quoting by name or by wire field, the sorted listing, prefix
    search) comes from one compact CatalogIndex cached on the catalog object itself (see
    udp_price.catalog_index: 40 bytes an item), so swapping in a new catalog is one reference
    assignment and nothing derived from an old catalog can outlive it (two catalogs may share a
    version: it is 32 bits). ``prices`` is a read-only mapping; Catalog(dict, version) also works
    (the index is then built on first use)."""

    prices: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    version: int = 0

    @classmethod
    def from_prices(cls, prices: Mapping[str, int]) -> Catalog:
        items = {encode_item(name): price for name, price in prices.items()}
        if any(not 0 <= price <= MAX_WIRE_PRICE for price in items.values()):
            # Kept as a plain mapping: QuoteServer.set_catalog refuses it naming the limit.
            return cls(MappingProxyType(dict(prices)), _content_version(sorted(prices.items())))
        return cls.from_index(CatalogIndex.from_items(items.items()))

    @classmethod
    def from_index(cls, index: CatalogIndex, version: int | None = None) -> Catalog:
        """The catalog of ``index``; ``version`` if already computed from the same index (by a child)."""
        catalog = cls(IndexedPrices(index), _index_version(index) if version is None else version)
        object.__setattr__(catalog, "index", index)  # fills the cached_property
        return catalog

    def __len__(self) -> int:
        return len(self.prices)

    @cached_property
    def index(self) -> CatalogIndex:
        """The compact sorted index every lookup uses (built once per catalog object)."""
        return CatalogIndex.from_items((encode_item(name), price) for name, price in self.prices.items())

    def price_of_field(self, item_field: bytes) -> int | None:
        """Unit price for a 32-byte wire item field, or None: the fast path's look-up."""
        return self.index.price_of_field(item_field)

    def entries(self, start: int, stop: int) -> list[tuple[str, int]]:
        """(name, price) of the items start..stop-1 in name order."""
        return [(field_name(f), price) for f, price in self.index.entries(start, stop)]

    def prefix_range(self, prefix: bytes) -> tuple[int, int]:
        """[start, stop) in name order of the items whose UTF-8 name starts with ``prefix``."""
        return self.index.prefix_range(prefix)

    def prepared(self) -> Catalog:
        """This catalog with its index built, so serving never builds it (returns self)."""
        _ = self.index
        return self


def _index_version(index: CatalogIndex) -> int:
    # First 4 bytes of BLAKE2b of the canonical content: every item's 32-byte wire field in name
    # order, then every price as a big-endian u64 in the same order. Reloading an unchanged file
    # keeps the version, and unlike a CRC (linear: anyone can pick prices that give any CRC)
    # nobody can make two different catalogs share a version without a brute-force search of
    # ~2^31 catalogs.
    digest = hashlib.blake2b(digest_size=4)
    for start in range(0, len(index), _HASH_CHUNK):
        digest.update(index.fields_blob(start, min(start + _HASH_CHUNK, len(index))))
    prices = array("Q", index.prices)
    if _LITTLE_ENDIAN:
        prices.byteswap()
    digest.update(prices.tobytes())
    return int.from_bytes(digest.digest(), "big")


def _content_version(listing: Iterable[tuple[str, int]]) -> int:
    """The version of a catalog not indexed (its prices do not all fit the wire): same canonical form."""
    items = list(listing)
    canonical = b"".join(encode_item(name) for name, _ in items) + b"".join(str(p).encode() + b"\n" for _, p in items)
    return int.from_bytes(hashlib.blake2b(canonical, digest_size=4).digest(), "big")


def parse_price(text: str) -> int:
    """'12.50' -> 1250. Raises ValueError with a readable reason for anything else."""
    text = text.strip()
    if not text:
        raise ValueError("price is empty")
    if text.startswith("-"):
        raise ValueError(f"price {_shown(text)} is negative")
    if not _PRICE_RE.match(text):
        raise ValueError(f"price {_shown(text)} is not a decimal number like 12.50")
    if "." in text and len(text.split(".", 1)[1]) > 2:
        raise ValueError(f"price {_shown(text)} has more than 2 decimals")
    cents = int(Decimal(text) * MINOR_UNITS)
    if cents > MAX_PRICE:
        raise ValueError(f"price {_shown(text)} is above the maximum {format_money(MAX_PRICE)}")
    return cents


def format_money(minor: int) -> str:
    """1250 -> '12.50'. Exact: integer arithmetic only."""
    sign = "-" if minor < 0 else ""
    major, cents = divmod(abs(minor), MINOR_UNITS)
    return f"{sign}{major}.{cents:02d}"


def parse_catalog_exactly(text: str, path: str = "<catalog>") -> Catalog:
    """Validate CSV text row by row into a Catalog; raises CatalogError listing the problems.

    The first MAX_LISTED_PROBLEMS problems are listed, the rest only counted (a file of a million
    bad rows must not cost a million messages). Once a row is bad the catalog will be refused, so
    its prices are no longer kept: only the names seen (to find duplicates) and a count."""
    problems = _Problems()
    prices: dict[str, int] = {}
    first_line: dict[str, int] = {}
    items = 0
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise CatalogError(path, ["line 1: file is empty; expected a header 'item,price'"])
        columns = [h.strip().lower() for h in header]
        if "item" not in columns or "price" not in columns:
            raise CatalogError(path, [f"line 1: header must name 'item' and 'price' columns, got {_shown(header)}"])
        item_col, price_col = columns.index("item"), columns.index("price")
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue  # blank lines are harmless
            checked = _check_row(row, item_col, price_col, first_line, line)
            if isinstance(checked, str):
                problems.add(f"line {line}: {checked}")
                prices.clear()  # refused anyway: keep nothing per row but the names
                continue
            items += 1
            if not problems:
                prices[checked[0]] = checked[1]
    except csv.Error as e:
        problems.add(f"line {reader.line_num}: broken CSV: {e}")
    if not items and not problems:
        problems.add("no items: the catalog must list at least one")
    for problem in wire_limit_problems(prices) if not problems else _too_many_items(items):
        problems.add(problem)
    if problems:
        raise CatalogError(path, problems.report())
    return Catalog.from_prices(prices)


MAX_LISTED_PROBLEMS = 100
"""Problems a CatalogError lists (and a reload logs, one line each); the rest are counted."""
_SHOWN_CHARS = 40
"""Longest piece of a cell quoted in a problem (a cell may hold up to 131,072 characters)."""


class _Problems:
    """The first MAX_LISTED_PROBLEMS problem sentences, and how many more there were."""

    def __init__(self) -> None:
        self.listed: list[str] = []
        self.more = 0

    def add(self, problem: str) -> None:
        if len(self.listed) < MAX_LISTED_PROBLEMS:
            self.listed.append(problem)
        else:
            self.more += 1

    def __bool__(self) -> bool:
        return bool(self.listed)

    def report(self) -> list[str]:
        if not self.more:
            return self.listed
        total = len(self.listed) + self.more
        return [*self.listed, f"... and {self.more:,} more problem(s), {total:,} in all (only the first are listed)"]


def _shown(value: object) -> str:
    """repr of ``value``, cut to _SHOWN_CHARS characters."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def parse_catalog(text: str, path: str = "<catalog>") -> Catalog:
    """Validate CSV text into a Catalog; raises CatalogError listing every problem.

    A plain catalog takes the fast path (udp_price.catalog_fast); anything it does not recognise,
    every bad catalog included, goes through the exact row-by-row parser, which names each problem."""
    index = parse_fast(text, MAX_PRICE, MAX_ITEMS)
    if index is not None:
        return Catalog.from_index(index)
    return parse_catalog_exactly(text, path)


def _check_row(
    row: list[str], item_col: int, price_col: int, first_line: dict[str, int], line: int
) -> tuple[str, int] | str:
    """(item, price) of one row, or a problem description if it is bad."""
    if len(row) <= max(item_col, price_col):
        return f"expected at least {max(item_col, price_col) + 1} columns, got {len(row)}"
    item = normalize_item(row[item_col])
    problem = item_problem(item)
    if problem is not None:
        return problem
    if item in first_line:
        return f"duplicate item {item!r} (first on line {first_line[item]})"
    first_line[item] = line  # even if its price is bad: a second row of it is still a duplicate
    try:
        return item, parse_price(row[price_col])
    except ValueError as e:
        return f"item {item!r}: {e}"


def wire_limit_problems(prices: Mapping[str, int]) -> list[str]:
    """Whatever in ``prices`` the wire format cannot carry, one sentence naming the limit each.

    Checked at every load and reload, so a catalog that loads can be served in full: no request
    meets a value that does not fit its field. (Name size is checked per row by parse_catalog.)"""
    problems = _too_many_items(len(prices))
    if isinstance(prices, IndexedPrices):
        return problems  # its prices sit in a u64 array: every one fits the field
    too_big = [item for item, price in prices.items() if not 0 <= price <= MAX_WIRE_PRICE]
    if too_big:
        problems.append(f"{len(too_big)} price(s) do not fit the 64-bit price field, e.g. {too_big[0]!r}")
    return problems


def _too_many_items(items: int) -> list[str]:
    if items <= MAX_ITEMS:
        return []
    return [f"{items:,} items; a catalog may hold at most {MAX_ITEMS:,} (its index costs 40 bytes an item in memory)"]


def load_catalog(path: str | Path) -> Catalog:
    """Read and validate a catalog file; raises CatalogError (also for unreadable files)."""
    return parse_catalog_bytes(read_catalog_file(path)[1], str(path))


def read_catalog_file(path: str | Path, limit: int = MAX_CATALOG_BYTES) -> tuple[os.stat_result, bytes]:
    """The file's stat and bytes, never blocking and never reading more than ``limit`` bytes.

    Only a regular file is read (a symlink to one is fine): a FIFO would block open() until a
    writer appears, a device like /dev/zero never ends. Checked before opening, then again on the
    opened descriptor (the name may be replaced in between); opened with O_NONBLOCK so even a FIFO
    swapped in at that moment cannot block. Raises CatalogError with the reason."""
    where = str(path)
    try:
        _require_regular(os.stat(where), where, limit)
        fd = os.open(where, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise CatalogError(where, [f"cannot read: {e.strerror or e}"]) from e
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        _require_regular(st, where, limit)
        try:
            raw = f.read(limit + 1)
        except OSError as e:
            raise CatalogError(where, [f"cannot read: {e.strerror or e}"]) from e
    if len(raw) > limit:
        raise CatalogError(where, [f"file grew past the {limit:,}-byte limit for a catalog while being read"])
    return st, raw


def _require_regular(st: os.stat_result, where: str, limit: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise CatalogError(where, [f"not a regular file ({_file_kind(st.st_mode)}); a catalog must be one"])
    if st.st_size > limit:
        raise CatalogError(where, [f"{st.st_size:,} bytes; a catalog file may have at most {limit:,}"])


def _file_kind(mode: int) -> str:
    kinds = {stat.S_ISFIFO: "a FIFO", stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device"}
    kinds |= {stat.S_ISDIR: "a directory", stat.S_ISSOCK: "a socket"}
    return next((name for test, name in kinds.items() if test(mode)), "not a file")


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
