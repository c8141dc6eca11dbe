"""Tests written to kill mutants that survived scripts/mutate.sh in the catalog: the limits of what
the wire can carry, versions, the parser's defaults and the problems it names."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import struct
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

import udp_price.catalog as catalog_module
from udp_price.catalog import (
    MAX_ITEMS,
    MAX_WIRE_PRICE,
    Catalog,
    _require_regular,
    load_catalog,
    parse_catalog,
    parse_catalog_bytes,
    parse_catalog_exactly,
    read_catalog_file,
    wire_limit_problems,
)
from udp_price.catalog_index import CatalogIndex, IndexedPrices
from udp_price.errors import CatalogError
from udp_price.wire.items import encode_item


class Sized(Mapping[str, int]):
    """A mapping that claims ``n`` items and holds none: the item-count limit without the memory."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __getitem__(self, key: str) -> int:
        raise KeyError(key)


def test_wire_limits_on_items_and_prices() -> None:
    assert wire_limit_problems(Sized(MAX_ITEMS)) == []
    assert wire_limit_problems(Sized(MAX_ITEMS + 1)) == [
        "10,000,001 items; a catalog may hold at most 10,000,000 (its index costs 40 bytes an item in memory)"
    ]
    assert wire_limit_problems({"a": 0, "b": MAX_WIRE_PRICE}) == []
    assert wire_limit_problems({"a": MAX_WIRE_PRICE, "b": -1, "c": MAX_WIRE_PRICE + 1}) == [
        "2 price(s) do not fit the 64-bit price field, e.g. 'b'"
    ]


def test_only_prices_the_wire_carries_are_indexed() -> None:
    for fits in (0, MAX_WIRE_PRICE):
        catalog = Catalog.from_prices({"apple": fits})
        assert isinstance(catalog.prices, IndexedPrices) and catalog.prices["apple"] == fits
    for too_big in (-1, MAX_WIRE_PRICE + 1):
        catalog = Catalog.from_prices({"apple": too_big})
        assert not isinstance(catalog.prices, IndexedPrices) and dict(catalog.prices) == {"apple": too_big}
        assert catalog.version == Catalog.from_prices({"apple": too_big}).version
        assert catalog.version != Catalog.from_prices({"apple": too_big, "pear": 1}).version


def test_from_index_keeps_a_version_given_and_computes_one_otherwise() -> None:
    index = CatalogIndex.from_items([(encode_item("apple"), 50), (encode_item("pear"), 55)])
    computed = Catalog.from_index(index)
    assert computed.index is index
    assert computed.version == Catalog.from_prices({"pear": 55, "apple": 50}).version
    assert computed.version != Catalog.from_prices({"pear": 55, "apple": 51}).version
    assert Catalog.from_index(index, 7).version == 7
    assert Catalog.from_index(index, 0).version == 0, "0 is a version too, not 'compute one'"


def test_prepared_builds_the_index_once() -> None:
    catalog = Catalog({"apple": 50, "pear": 55})
    assert "index" not in vars(catalog)
    assert catalog.prepared() is catalog and "index" in vars(catalog)
    assert catalog.price_of_field(encode_item("pear")) == 55


@pytest.mark.parametrize("parse", [parse_catalog, parse_catalog_exactly])
def test_parsers_name_the_catalog_by_default(parse: Callable[[str], Catalog]) -> None:
    with pytest.raises(CatalogError) as info:
        parse("item,price\n")
    assert info.value.path == "<catalog>"
    assert info.value.problems == ["no items: the catalog must list at least one"]


def test_catalog_bytes_are_utf8_with_an_optional_bom() -> None:
    assert dict(parse_catalog_bytes("\ufeffitem,price\ncafé,1.50\n".encode()).prices) == {"café": 150}
    with pytest.raises(CatalogError) as info:
        parse_catalog_bytes(b"item,price\n\xff,1\n")
    assert info.value.path == "<catalog>" and info.value.problems[0].startswith("cannot read: 'utf-8'")


def test_load_catalog_reads_and_names_the_file(tmp_path: Path) -> None:
    good = tmp_path / "good.csv"
    good.write_text("item,price\napple,0.50\n", encoding="utf-8")
    loaded = load_catalog(good)
    assert dict(loaded.prices) == {"apple": 50} and loaded.version == Catalog.from_prices({"apple": 50}).version
    bad = tmp_path / "bad.csv"
    bad.write_text("item,price\napple,x\n", encoding="utf-8")
    with pytest.raises(CatalogError) as info:
        load_catalog(bad)
    assert info.value.path == str(bad) and info.value.problems[0].startswith("line 2: item 'apple'")


def test_a_long_header_is_quoted_cut_to_forty_characters() -> None:
    with pytest.raises(CatalogError) as info:
        parse_catalog_exactly("a" * 33 + "\n")  # repr ['aaa...'] is 37 characters: whole
    assert info.value.problems == ["line 1: header must name 'item' and 'price' columns, got ['" + "a" * 33 + "']"]
    with pytest.raises(CatalogError) as info:
        parse_catalog_exactly("a" * 36 + "\n")  # repr is exactly 40: whole
    assert info.value.problems[0].endswith("got ['" + "a" * 36 + "']")
    with pytest.raises(CatalogError) as info:
        parse_catalog_exactly("a" * 37 + "\n")  # 41: cut to 37 and '...'
    assert info.value.problems[0].endswith("got ['" + "a" * 35 + "...")


def test_the_version_covers_every_name_and_every_price() -> None:
    base = Catalog.from_prices({"apple": 1, "pear": 2}).version
    assert Catalog.from_prices({"apricot": 1, "pear": 2}).version != base, "the first name"
    assert Catalog.from_prices({"apple": 1, "plum": 2}).version != base, "the last name"
    assert Catalog.from_prices({"apple": 1, "pear": 3}).version != base
    assert Catalog.from_prices({"pear": 2, "apple": 1}).version == base, "order of the file does not matter"


def test_the_version_is_the_documented_digest_of_the_canonical_content() -> None:
    """docs/protocol.md: the first 4 bytes of BLAKE2b of the content; the content is every item's
    wire field in name order, then every price as a big-endian u64 in the same order."""
    content = encode_item("apple") + encode_item("pear") + struct.pack(">QQ", 50, 55)
    expected = int.from_bytes(hashlib.blake2b(content, digest_size=4).digest(), "big")
    assert Catalog.from_prices({"pear": 55, "apple": 50}).version == expected


def test_a_plain_catalog_never_goes_through_the_row_by_row_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(text: str, path: str = "") -> Catalog:
        raise AssertionError("the exact parser was used for a plain catalog")

    monkeypatch.setattr(catalog_module, "parse_catalog_exactly", refuse)
    assert dict(parse_catalog("item,price\napple,0.50\npear,1\n").prices) == {"apple": 50, "pear": 100}


def test_every_line_ending_is_read_and_a_quoted_line_break_kept_as_written() -> None:
    """CR LF, LF and a lone CR (old Mac files) end rows; RFC 4180 2.6: a quoted field may hold CR LF."""
    for text in ("item,price\r\napple,1\r\n", "item,price\napple,1\n", "item,price\rapple,1\r"):
        assert dict(parse_catalog_exactly(text).prices) == {"apple": 100} == dict(parse_catalog(text).prices)
    quoted = 'item,price\n"a\r\nb",1\n'
    assert dict(parse_catalog_exactly(quoted).prices) == {"a\r\nb": 100} == dict(parse_catalog(quoted).prices)


def test_a_refused_catalog_still_names_its_item_count_past_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog_module, "MAX_ITEMS", 2)
    with pytest.raises(CatalogError) as info:
        parse_catalog_exactly("item,price\na,1\nb,1\nc,1\nd,x\n")
    assert info.value.problems == [
        "line 5: item 'd': price 'x' is not a decimal number like 12.50",
        "3 items; a catalog may hold at most 2 (its index costs 40 bytes an item in memory)",
    ]


def test_price_problems_are_named() -> None:
    with pytest.raises(CatalogError) as info:
        parse_catalog_exactly("item,price\napple,\npear,10000000000000.01\n")
    assert info.value.problems == [
        "line 2: item 'apple': price is empty",
        "line 3: item 'pear': price '10000000000000.01' is above the maximum 10000000000000.00",
    ]


@pytest.mark.parametrize(
    ("mode", "kind"),
    [
        (stat.S_IFDIR, "a directory"),
        (stat.S_IFIFO, "a FIFO"),
        (stat.S_IFCHR, "a character device"),
        (stat.S_IFBLK, "a block device"),
        (stat.S_IFSOCK, "a socket"),
        (stat.S_IFLNK, "not a file"),  # what lstat would say of a symlink; stat follows them
    ],
)
def test_what_is_not_a_regular_file_is_named(mode: int, kind: str) -> None:
    st = os.stat_result((mode | 0o644, 0, 0, 1, 0, 0, 0, 0, 0, 0))
    with pytest.raises(CatalogError) as info:
        _require_regular(st, "prices.csv", 100)
    assert (info.value.path, info.value.problems) == (
        "prices.csv",
        [f"not a regular file ({kind}); a catalog must be one"],
    )


@pytest.mark.skipif(
    not Path("/proc/self/mem").exists(), reason="needs Linux procfs (/proc/self/status, /proc/self/mem)"
)
def test_unreadable_catalog_files_are_named_with_the_reason(tmp_path: Path) -> None:
    cases = [
        (tmp_path / "missing.csv", 100, "cannot read: No such file or directory"),
        (tmp_path, 100, "not a regular file (a directory); a catalog must be one"),
        # procfs files claim 0 bytes: the read itself must stop at the limit.
        (Path("/proc/self/status"), 10, "file grew past the 10-byte limit for a catalog while being read"),
        (Path("/proc/self/mem"), 100, "cannot read: Input/output error"),  # address 0 is never mapped
    ]
    for path, limit, problem in cases:
        with pytest.raises(CatalogError) as info:
            read_catalog_file(path, limit)
        assert (info.value.path, info.value.problems) == (str(path), [problem])


class Blocked(Exception):
    """The guard timer fired: an open() blocked."""


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not hasattr(signal, "setitimer"), reason="needs POSIX FIFOs")
def test_a_fifo_swapped_in_after_the_check_is_refused_without_blocking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name is checked, then opened: a FIFO put there in between must not block the open
    (O_NONBLOCK), and the check on the opened descriptor names it."""
    fifo = tmp_path / "prices.csv"
    os.mkfifo(fifo)
    regular, real_stat = os.stat(__file__), os.stat  # what the name was when it was checked
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: regular if str(p) == str(fifo) else real_stat(p, *a, **k))

    def blocked(signum: int, frame: object) -> None:
        raise Blocked  # only a bound on a broken build: the open returns at once

    previous = signal.signal(signal.SIGALRM, blocked)
    signal.setitimer(signal.ITIMER_REAL, 10.0)
    try:
        with pytest.raises(CatalogError) as info:
            read_catalog_file(fifo)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert (info.value.path, info.value.problems) == (str(fifo), ["not a regular file (a FIFO); a catalog must be one"])
