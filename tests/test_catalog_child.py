"""A catalog parsed in a child process is exactly the catalog parsed in the server; reloads use it."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from udp_price.catalog import Catalog, parse_catalog_bytes
from udp_price.errors import CatalogError
from udp_price.server import ops as ops_module
from udp_price.server.catalog_child import decode_answer, encode_answer, parse_in_child
from udp_price.server.core import QuoteServer
from udp_price.server.memory import return_freed_memory
from udp_price.server.ops import Operations

WAIT_S = 60.0


def shuffled_catalog(n: int, price_of_probe: str = "1.00") -> bytes:
    step = 7919
    rows = [f"sku-{(k * step) % n:07d},{k % 1000}.{k % 100:02d}\n" for k in range(n)]
    return ("item,price\n" + f"probe,{price_of_probe}\n" + "".join(rows)).encode()


def same_catalog(a: Catalog, b: Catalog) -> None:
    assert a.version == b.version
    assert len(a) == len(b)
    assert a.entries(0, len(a)) == b.entries(0, len(b))


@pytest.mark.parametrize(
    "raw",
    [
        shuffled_catalog(5000),
        # Quoted names and a non-ASCII name: the exact parser's path, in the child too.
        'item,price\n"b, with comma",1.50\napple,0.50\nçava,2\n'.encode(),
    ],
    ids=["fast-path", "exact-parser"],
)
def test_the_child_returns_exactly_the_catalog_parsed_in_process(raw: bytes) -> None:
    child = parse_in_child(raw, "c.csv")
    assert child is not None
    same_catalog(child, parse_catalog_bytes(raw, "c.csv"))
    assert child.prices["apple" if b"apple" in raw else "probe"] in (50, 100)


def test_a_bad_catalog_raises_the_same_problems_from_the_child() -> None:
    raw = b"item,price\napple,-1\npear,0.5\npear,0.6\n"
    with pytest.raises(CatalogError) as in_process:
        parse_catalog_bytes(raw, "bad.csv")
    with pytest.raises(CatalogError) as in_child:
        parse_in_child(raw, "bad.csv")
    assert in_child.value.path == "bad.csv"
    assert in_child.value.problems == in_process.value.problems
    assert len(in_child.value.problems) == 2


def test_a_garbled_answer_is_refused_not_half_used() -> None:
    good = b"".join(encode_answer(shuffled_catalog(100), "c.csv"))
    assert decode_answer(good, "c.csv") is not None
    for garbled in (b"", b"not json\n", b"[1]\n", good[:-1], good + b"\0", b'{"items": 0, "version": 1}\n'):
        assert decode_answer(garbled, "c.csv") is None


def wait_for_ready(ops: Operations) -> None:
    done = threading.Event()
    ops.wake = done.set
    ops.reload()
    assert done.wait(WAIT_S), "the reload worker finished within the bound"


def test_a_reload_swaps_in_the_catalog_the_child_parsed(tmp_path: Path) -> None:
    path = tmp_path / "catalog.csv"
    path.write_bytes(shuffled_catalog(3000, "1.00"))
    core = QuoteServer(parse_catalog_bytes(path.read_bytes()))
    ops = Operations(core, str(path), child_min_bytes=0)
    new_raw = shuffled_catalog(3000, "2.00")
    path.write_bytes(new_raw)
    wait_for_ready(ops)
    ops.swap_in_ready()
    ops.close()
    same_catalog(core.catalog, parse_catalog_bytes(new_raw))
    assert core.catalog.prices["probe"] == 200
    assert core.stats["reloads.ok"] == 1 and core.stats["reloads.in_process"] == 0


def test_without_a_child_the_reload_parses_in_process_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ops_module, "parse_in_child", lambda raw, path: None)
    path = tmp_path / "catalog.csv"
    path.write_bytes(shuffled_catalog(200, "1.00"))
    core = QuoteServer(parse_catalog_bytes(path.read_bytes()))
    ops = Operations(core, str(path), child_min_bytes=0)
    path.write_bytes(shuffled_catalog(200, "3.00"))
    wait_for_ready(ops)
    ops.swap_in_ready()
    ops.close()
    assert core.catalog.prices["probe"] == 300
    assert core.stats["reloads.ok"] == 1 and core.stats["reloads.in_process"] == 1


def test_a_bad_file_parsed_in_the_child_is_rejected_and_the_old_catalog_kept(tmp_path: Path) -> None:
    path = tmp_path / "catalog.csv"
    path.write_bytes(shuffled_catalog(200, "1.00"))
    core = QuoteServer(parse_catalog_bytes(path.read_bytes()))
    old = core.catalog
    ops = Operations(core, str(path), child_min_bytes=0)
    path.write_bytes(b"item,price\napple,abc\n")
    wait_for_ready(ops)
    ops.swap_in_ready()
    ops.close()
    assert core.catalog is old
    assert core.stats["reloads.failed"] == 1 and core.stats["reloads.in_process"] == 0


def test_returning_freed_memory_is_harmless() -> None:
    return_freed_memory()
    return_freed_memory()
