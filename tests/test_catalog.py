"""Catalog validation: every problem reported with its line number; money exact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import CATALOG, expected_prices

from udp_price.catalog import Catalog, format_money, load_catalog, parse_catalog, parse_price
from udp_price.errors import CatalogError


def problems_of(text: str) -> list[str]:
    with pytest.raises(CatalogError) as info:
        parse_catalog(text)
    return info.value.problems


def test_bundled_catalog_loads_with_exact_prices() -> None:
    catalog = load_catalog(CATALOG)
    assert dict(catalog.prices) == expected_prices()
    assert len(catalog) >= 30
    assert catalog.prices["café crème"] == 380
    assert any(" " in name for name in catalog.prices)


@pytest.mark.parametrize(
    ("text", "cents"),
    [("0.50", 50), ("3", 300), ("12.5", 1250), ("0.07", 7), ("1000000.99", 100000099), (" 2.10 ", 210)],
)
def test_parse_price_is_exact(text: str, cents: int) -> None:
    assert parse_price(text) == cents


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("-1", "negative"),
        ("1.234", "more than 2 decimals"),
        ("abc", "not a decimal"),
        ("1e3", "not a decimal"),
        ("NaN", "not a decimal"),
        ("0.1.2", "not a decimal"),
        ("99999999999999", "maximum"),
    ],
)
def test_parse_price_rejects(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_price(text)


def test_format_money() -> None:
    assert [format_money(v) for v in (0, 5, 50, 150, 123456789)] == ["0.00", "0.05", "0.50", "1.50", "1234567.89"]


def test_every_problem_is_reported_with_its_line() -> None:
    text = "item,price\napple,0.50\n,1.00\napple,0.60\npear,-1\nplum,1.234\n" + "x" * 33 + ",1\nfig,abc\nkiwi\n"
    assert problems_of(text) == [
        "line 3: missing item",
        "line 4: duplicate item 'apple' (first on line 2)",
        "line 5: item 'pear': price '-1' is negative",
        "line 6: item 'plum': price '1.234' has more than 2 decimals",
        "line 7: item is 33 bytes in UTF-8; the wire field holds 32",
        "line 8: item 'fig': price 'abc' is not a decimal number like 12.50",
        "line 9: expected at least 2 columns, got 1",
    ]


def test_missing_header_and_empty_file() -> None:
    assert problems_of("apple,0.50\n")[0].startswith("line 1: header must name 'item' and 'price'")
    assert problems_of("")[0].startswith("line 1: file is empty")
    assert problems_of("item,price\n") == ["no items: the catalog must list at least one"]


def test_extra_columns_and_blank_lines_are_fine() -> None:
    catalog = parse_catalog("sku,price,item\n1,0.50,apple\n\n2,2,pear\n")
    assert dict(catalog.prices) == {"apple": 50, "pear": 200}


def test_broken_quoting_is_reported() -> None:
    assert "broken CSV" in problems_of('item,price\n"apple,0.50\n')[0]


def test_version_follows_content() -> None:
    a = parse_catalog("item,price\napple,0.50\n")
    assert parse_catalog("item,price\n\napple,0.5\n").version == a.version
    assert parse_catalog("item,price\napple,0.51\n").version != a.version


def test_unreadable_file_is_a_catalog_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(tmp_path / "missing.csv")
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("item,price\ncaf\xe9,1\n".encode("latin-1"))
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(bad)


@pytest.mark.parametrize(
    "text",
    [
        "item,price\nzeta,1\nalpha, 2.5\n\nbeta ,003.07\r\n",
        "price,note,item\n1,x,café\n2,y,cafe\n",
        "item,price\napple,1\napple,2\n",  # duplicate: the exact parser names it
        'item,price\n"a,b",1\n',  # quoting: exact parser
    ],
)
def test_fast_path_agrees_with_the_exact_parser(text: str) -> None:
    from udp_price.catalog import parse_catalog_exactly

    def outcome(parse: Any) -> Any:
        try:
            c = parse(text)
        except CatalogError as e:
            return e.problems
        return dict(c.prices), c.version

    assert outcome(parse_catalog) == outcome(parse_catalog_exactly)


def test_prefix_pages_list_exactly_the_matching_names() -> None:
    from udp_price.server.core import QuoteServer
    from udp_price.wire import ListRequest, decode_list_reply, encode_list_request

    names = {f"{p}{k:03d}": k for p in ("pe", "pea", "pf", "p") for k in range(20)}
    core = QuoteServer(Catalog.from_prices(names))
    got: list[tuple[str, int]] = []
    for page in range(3):
        reply = decode_list_reply(
            core.handle_datagram(encode_list_request(ListRequest(page, page, "pe")), ("127.0.0.1", 40000), 0.0) or b""
        )
        assert reply.pages == 3 and reply.catalog_version == core.catalog.version
        got += reply.entries
    assert got == sorted((n, p) for n, p in names.items() if n.startswith("pe"))
    none = decode_list_reply(
        core.handle_datagram(encode_list_request(ListRequest(9, 0, "zz")), ("127.0.0.1", 40000), 0.0) or b""
    )
    assert (none.pages, none.entries) == (1, ())
