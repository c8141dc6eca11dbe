"""Attacks from the review of the million-item catalog work, kept as tests (small catalogs)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

import udp_price.cli.server as server_cli
from udp_price.catalog import parse_catalog, parse_catalog_bytes
from udp_price.server.core import QuoteServer
from udp_price.server.ops import Operations


def _await_reload(ops: Operations, server: QuoteServer, timeout_s: float = 10.0) -> None:
    """Ask for a reload and swap in its outcome (bounded wait on the reload counters)."""
    ops.reload()
    deadline = time.monotonic() + timeout_s
    while not any(k.startswith("reloads.") for k in server.stats) and time.monotonic() < deadline:
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
