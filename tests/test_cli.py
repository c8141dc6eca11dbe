"""The command lines as a user runs them: subprocesses, stdout, stderr, exit codes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import run_cli, start_server

PY = sys.executable
FAST = ["--timeout", "0.05", "--deadline", "1"]


def start_cli_server(*extra: str) -> tuple[subprocess.Popen[str], str]:
    proc, (host, port) = start_server(*extra)
    return proc, f"{host}:{port}"


@pytest.fixture
def server_addr() -> Iterator[str]:
    proc, addr = start_cli_server()
    try:
        yield addr
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_quote_prints_the_total(server_addr: str) -> None:
    r = run_cli("udp_client.py", "--server", server_addr, "quote", "café crème", "2")
    assert (r.returncode, r.stdout, r.stderr) == (0, "2 x café crème @ 3.80 = 7.60\n", "")


def test_quote_json(server_addr: str) -> None:
    # A 30 s first timer: on a loaded machine the default 0.25 s can fire before a live server is
    # scheduled, and a second attempt would be right; here one datagram on loopback must do.
    r = run_cli("udp_client.py", "--server", server_addr, "--timeout", "30", "--json", "quote", "apple", "3")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert {k: out[k] for k in ("item", "quantity", "unit_price", "total", "status", "attempts")} == {
        "item": "apple",
        "quantity": 3,
        "unit_price": "0.50",
        "total": "1.50",
        "status": "OK",
        "attempts": 1,
    }
    assert len(out["request_id"]) == 16 and out["latency_ms"] >= 0


@pytest.mark.parametrize(
    ("item", "qty", "message"),
    [
        ("kiwi", "1", "udp_client: unknown item 'kiwi'\n"),
    ],
)
def test_server_error_status_exits_1(server_addr: str, item: str, qty: str, message: str) -> None:
    r = run_cli("udp_client.py", "--server", server_addr, "quote", item, qty)
    assert (r.returncode, r.stdout, r.stderr) == (1, "", message)


def test_json_failure_has_null_money(server_addr: str) -> None:
    r = run_cli("udp_client.py", "--server", server_addr, "--json", "quote", "kiwi", "1")
    assert r.returncode == 1, r.stderr
    out = json.loads(r.stdout)
    assert (out["status"], out["unit_price"], out["total"]) == ("UNKNOWN_ITEM", None, None)


@pytest.mark.parametrize(
    ("qty", "why"),
    [
        ("0", "quantity 0 is out of range: a whole number from 1 to 1000000000"),
        ("1000000001", "quantity 1000000001 is out of range: a whole number from 1 to 1000000000"),
        ("-1", "quantity '-1' is not a whole number from 1 to 1000000000"),
        ("-2", "quantity '-2' is not a whole number from 1 to 1000000000"),
        ("+3", "quantity '+3' is not a whole number from 1 to 1000000000"),
        ("1e3", "quantity '1e3' is not a whole number from 1 to 1000000000"),
        ("٣", "quantity '٣' is not a whole number from 1 to 1000000000"),
        ("9" * 5000, "quantity '99999999999999999999...' has 5,000 characters; at most 10 digits allowed"),
    ],
)
def test_one_quantity_rule_quote_rejects_locally_exit_2(qty: str, why: str) -> None:
    """The quantity rule is applied before anything is sent: port 9 (discard) is never asked."""
    r = run_cli("udp_client.py", "--server", "127.0.0.1:9", "quote", "apple", qty)
    assert (r.returncode, r.stdout) == (2, ""), r.stderr
    assert r.stderr.endswith(f"argument quantity: {why}\n") and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["quote", "apple", "-3"],
        ["quote", "apple", "1.5"],
        ["quote", "apple"],
        ["--server", "nohost", "quote", "a", "1"],
        ["--timeout", "0", "quote", "a", "1"],
        ["--retries", "-1", "quote", "a", "1"],
        ["frobnicate"],
        [],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    r = run_cli("udp_client.py", *args)
    assert r.returncode == 2 and r.stdout == ""
    assert "error:" in r.stderr


def test_item_too_long_exits_2() -> None:
    r = run_cli("udp_client.py", "quote", "x" * 40, "1")
    assert r.returncode == 2 and "the wire field holds 32" in r.stderr


def test_server_down_exits_3() -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = run_cli("udp_client.py", "--server", f"127.0.0.1:{port}", *FAST, "quote", "apple", "1")
    assert r.returncode == 3 and r.stdout == ""
    assert r.stderr.startswith(f"udp_client: no answer from 127.0.0.1:{port} after ")
    assert r.stderr.count("\n") == 1


def test_help_documents_examples_and_exit_codes() -> None:
    r = run_cli("udp_client.py", "--help")
    assert r.returncode == 0
    assert "examples:" in r.stdout and "exit codes:" in r.stdout and "no valid answer" in r.stdout
    assert "exit codes:" in run_cli("udp_server.py", "--help").stdout


def test_bad_catalog_stops_server_with_line_numbers(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("item,price\napple,0.5\napple,1\npear,-2\n", encoding="utf-8")
    r = run_cli("udp_server.py", "--port", "0", "--catalog", str(bad))
    assert r.returncode == 4 and r.stdout == ""
    assert "line 3: duplicate item 'apple' (first on line 2)" in r.stderr
    assert "line 4: item 'pear': price '-2' is negative" in r.stderr
    assert "Traceback" not in r.stderr


def test_port_in_use_exits_5(server_addr: str) -> None:
    r = run_cli("udp_server.py", "--port", server_addr.split(":")[1])
    assert r.returncode == 5 and "cannot bind" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_server_stops_cleanly_with_counters(sig: signal.Signals) -> None:
    proc, addr = start_cli_server()
    # One transmission each, counted exactly: a loaded host may take longer than the default
    # 0.25 s first timeout to answer, and a retransmission would be a third request.
    once = ("--server", addr, "--timeout", "10")
    assert run_cli("udp_client.py", *once, "quote", "apple", "1").returncode == 0
    assert run_cli("udp_client.py", *once, "quote", "kiwi", "1").returncode == 1
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "udp_server: stopped; " in out
    assert "requests=2" in out and "status.OK=1" in out and "status.UNKNOWN_ITEM=1" in out
    assert "Traceback" not in err


def test_demo_quotes_survive_loss() -> None:
    r = run_cli("demo.py", "--loss", "0.3", "--seed", "7", timeout=60)
    assert r.returncode == 0, r.stderr
    assert "12 quotes: 12 exact (checked against the catalog), 0 wrong, 0 failed;" in r.stdout
    assert "2 x café crème @ 3.80 = 7.60" in r.stdout
    assert " 0 retransmissions" not in r.stdout, "at 30% loss the demo must show retries it survived"


def test_items_lists_the_server_catalog(server_addr: str) -> None:
    from helpers import expected_prices

    r = run_cli("udp_client.py", "--server", server_addr, "items")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    prices = expected_prices()
    assert [line.rsplit(None, 1)[0].strip() for line in lines] == sorted(prices)
    first = prices[sorted(prices)[0]]
    assert lines[0].split()[-1] == f"{first // 100}.{first % 100:02d}"
    assert f"{len(prices)} items, catalog version" in r.stderr
    as_json = json.loads(run_cli("udp_client.py", "--server", server_addr, "--json", "items").stdout)
    assert len(as_json) == len(prices) and as_json[0]["item"] == sorted(prices)[0]
