"""Attacks from the review of the million-item catalog work, kept as tests (small catalogs)."""

from __future__ import annotations

import csv
import logging
import os
import random
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import udp_price.cli.client as client_cli
import udp_price.cli.server as server_cli
from udp_price.catalog import MAX_LISTED_PROBLEMS, Catalog, parse_catalog, parse_catalog_bytes, parse_catalog_exactly
from udp_price.errors import CatalogError
from udp_price.server.core import QuoteServer
from udp_price.server.ops import Operations


def _await_reload(ops: Operations, server: QuoteServer, timeout_s: float = 10.0) -> None:
    """Ask for a reload and swap in its outcome (bounded wait on the reload counters)."""
    ops.reload()
    deadline = time.monotonic() + timeout_s
    while not any(k.startswith("reloads.") for k in server.stats):
        assert time.monotonic() < deadline, f"no reload outcome within {timeout_s} s"
        ops.swap_in_ready()
        time.sleep(0.01)


def test_a_catalog_replaced_during_the_start_up_parse_is_loaded_by_the_next_reload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "catalog.csv"
    path.write_text("item,price\nprobe,1.00\n", encoding="utf-8")
    new = tmp_path / "new.csv"
    new.write_text("item,price\nprobe,2.00\n", encoding="utf-8")
    real_parse = parse_catalog_bytes
    seen: dict[str, Any] = {}

    def parse_while_replaced(raw: bytes, where: str) -> Any:
        os.replace(new, path)  # an operator's atomic rename lands while start-up parses the old bytes
        return real_parse(raw, where)

    def serve_one_reload(sock: object, server: QuoteServer, control: object, duties: Operations, **_: object) -> None:
        seen["at_start"] = server.catalog.prices["probe"]
        _await_reload(duties, server)
        seen["after_reload"] = server.catalog.prices["probe"]
        seen["stats"] = dict(server.stats)

    monkeypatch.setattr(server_cli, "parse_catalog_bytes", parse_while_replaced)
    monkeypatch.setattr(server_cli, "serve", serve_one_reload)
    assert server_cli.main(["--listen", "127.0.0.1:0", "--catalog", str(path)]) == 0
    assert seen["at_start"] == 100
    assert seen["stats"].get("reloads.ok") == 1 and "reloads.unchanged" not in seen["stats"]
    assert seen["after_reload"] == 200


def test_operations_without_a_start_up_state_does_not_take_a_different_file_as_loaded(tmp_path: Path) -> None:
    path = tmp_path / "catalog.csv"
    server = QuoteServer(parse_catalog("item,price\nprobe,1.00\n"))
    path.write_text("item,price\nprobe,2.00\n", encoding="utf-8")  # not what is served
    ops = Operations(server, str(path))
    try:
        _await_reload(ops, server)
        assert server.stats["reloads.ok"] == 1 and server.catalog.prices["probe"] == 200
    finally:
        ops.close()


FULL_WIDTH_NAMES = ["x" * 32, "x" * 31, "x" * 30 + "y", "é" * 16, "é" * 15 + "e", "日" * 10 + "ab", "😀" * 8]


@pytest.mark.parametrize("name", FULL_WIDTH_NAMES)
def test_a_full_width_prefix_finds_exactly_that_name(name: str) -> None:
    others = [n for n in FULL_WIDTH_NAMES if n != name]
    catalog = parse_catalog("item,price\n" + "".join(f"{n},{i}.00\n" for i, n in enumerate(FULL_WIDTH_NAMES)))
    prefix = name.encode()
    start, stop = catalog.prefix_range(prefix)
    assert [n for n, _ in catalog.entries(start, stop)] == sorted(
        n for n in FULL_WIDTH_NAMES if n.encode().startswith(prefix)
    )
    if len(prefix) == 32:
        assert [n for n, _ in catalog.entries(start, stop)] == [name]
        without = parse_catalog("item,price\n" + "".join(f"{n},1.00\n" for n in others))
        assert without.prefix_range(prefix)[0] == without.prefix_range(prefix)[1]


def test_prefix_range_agrees_with_brute_force_for_every_prefix_length() -> None:
    rng = random.Random(14)
    alphabet = ["a", "b", "é", "日", "😀", "z", "~", "\x7f", "ÿ"]
    for _ in range(60):  # bounded: 60 small catalogs
        base = "".join(rng.choice(alphabet) for _ in range(20))
        names: set[str] = set()
        while len(names) < 25:
            name = (
                base[: rng.randint(0, 20)] + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
            ).strip()
            while len(name.encode()) > 32:
                name = name[:-1]
            if name:
                names.add(name)
        catalog = parse_catalog("item,price\n" + "".join(f"{n},1.00\n" for n in names))
        ordered = sorted(names, key=str.encode)
        for name in ordered:
            data = name.encode()
            for cut in range(1, len(data) + 1):
                prefix = data[:cut]
                start, stop = catalog.prefix_range(prefix)
                got = [n for n, _ in catalog.entries(start, stop)]
                assert got == [n for n in ordered if n.encode().startswith(prefix)], (prefix, ordered)
        assert catalog.prefix_range(b"a" * 33) == (0, 0)


LIMIT = csv.field_size_limit()
FIELD_LIMIT_CASES = {
    "long extra column": "item,price,description\napple,1.00," + "d" * 200_000 + "\n",
    "name padded with spaces": "item,price\n" + " " * 200_000 + "apple,1.00\n",
    "price padded with spaces": "item,price\napple," + " " * 200_000 + "1.00\n",
    "header padded with spaces": "item," + " " * 200_000 + "price\napple,1.00\n",
    "one character over the limit": "item,price\n" + " " * (LIMIT - 4) + "apple,1.00\n",
    "a field just under the limit": "item,price\n" + " " * (LIMIT - 6) + "apple,1.00\n",
    "a line over the limit, every field under": "item,price,a,b\napple,1.00,"
    + "d" * (LIMIT - 10)
    + ","
    + "e" * (LIMIT - 10)
    + "\n",
}


def _outcome(parse: Callable[[str], Catalog], text: str) -> object:
    try:
        return dict(parse(text).prices.items())
    except CatalogError as e:
        return e.problems


@pytest.mark.parametrize("text", FIELD_LIMIT_CASES.values(), ids=FIELD_LIMIT_CASES.keys())
def test_the_fast_parser_obeys_the_csv_field_limit_like_the_exact_parser(text: str) -> None:
    fast, exact = _outcome(parse_catalog, text), _outcome(parse_catalog_exactly, text)
    assert fast == exact
    too_long = any(len(cell) > LIMIT for line in text.split("\n") for cell in line.split(","))
    assert isinstance(exact, list) == too_long


def _problems_of(text: str) -> list[str]:
    with pytest.raises(CatalogError) as caught:
        parse_catalog(text)
    return caught.value.problems


def test_a_bad_catalog_lists_the_first_problems_and_counts_the_rest() -> None:
    problems = _problems_of("item,price\n" + "a,1\n" * 5_000)
    assert len(problems) == MAX_LISTED_PROBLEMS + 1
    assert problems[0] == "line 3: duplicate item 'a' (first on line 2)"
    assert problems[-1] == "... and 4,899 more problem(s), 4,999 in all (only the first are listed)"
    assert len(_problems_of("item,price\n" + "a,1\n" * (MAX_LISTED_PROBLEMS + 1))) == MAX_LISTED_PROBLEMS


def test_a_problem_quotes_at_most_a_short_piece_of_a_long_cell() -> None:
    (problem,) = _problems_of("item,price\napple," + "9" * 50 + "x" * 100_000 + "\n")
    assert problem.startswith("line 2: item 'apple': price '99999") and len(problem) < 150


@pytest.mark.parametrize(
    "text",
    [
        "item,price\n" + "a,1\n" * 50_000,
        "item,price\n" + "".join(f"i{i},x\n" for i in range(50_000)),
        "item,price\n" + "".join(f"i{i % 40_000},1\n" for i in range(80_000)),  # duplicates across chunks
    ],
    ids=["one duplicate name", "every price bad", "duplicates across chunks"],
)
def test_a_bad_catalog_costs_no_more_memory_per_byte_than_a_parse_needs(text: str) -> None:
    # Before: a message per row and every row's price kept, about 50 times the file's size.
    tracemalloc.start()
    try:
        _problems_of(text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 35 * len(text)


def test_a_rejected_reload_logs_a_bounded_number_of_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "catalog.csv"
    path.write_text("item,price\napple,1.00\n", encoding="utf-8")
    server = QuoteServer(parse_catalog(path.read_text(encoding="utf-8")))
    ops = Operations(server, str(path))
    path.write_text("item,price\n" + "a,1\n" * 5_000, encoding="utf-8")
    try:
        with caplog.at_level(logging.ERROR, logger="udp_price.server"):
            _await_reload(ops, server)
    finally:
        ops.close()
    assert server.stats["reloads.failed"] == 1 and server.catalog.prices["apple"] == 100
    logged = [r for r in caplog.records if r.name == "udp_price.server"]
    assert len(logged) == 1, "the refusal and its reasons are one record (a shutdown cannot split them)"
    lines = logged[0].getMessage().splitlines()
    assert len(lines) == 1 + MAX_LISTED_PROBLEMS + 1 and "4,999 in all" in lines[-1]
    assert lines[0].startswith("catalog reload rejected")
    assert lines[1] == "  line 3: duplicate item 'a' (first on line 2)"


def test_items_with_a_prefix_of_only_spaces_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        client_cli.main(["--server", "127.0.0.1:9", "items", "--prefix", "  "])
    assert caught.value.code == 2
    assert "--prefix: is only spaces" in capsys.readouterr().err
