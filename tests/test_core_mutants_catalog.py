"""Tests written to kill mutants that survived scripts/mutate.sh in the catalog: the limits of what
the wire can carry, versions, the parser's defaults and the problems it names."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from udp_price.catalog import (
    MAX_ITEMS,
    MAX_WIRE_PRICE,
    Catalog,
    load_catalog,
    parse_catalog,
    parse_catalog_bytes,
    parse_catalog_exactly,
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
