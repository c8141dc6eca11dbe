"""The three commands behave like the tools their users know: flags anywhere and the same --json,
-v/-q and --version everywhere; JSON-only stdout when asked; ISO 8601 log times; Prometheus
conventions checked by promtool on a live scrape; the quote page's HTTP status codes."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import rootenv
from helpers import PY, ROOT, free_port, run_cli, spawn, start_server

ISO_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00 udp_server: [A-Z]+ ")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    proc, (host, port) = start_server()
    yield f"{host}:{port}"
    proc.terminate()
    proc.communicate(timeout=10)


def dead_address() -> str:
    return f"127.0.0.1:{free_port()}"


def test_shared_flags_work_before_or_after_the_subcommand(server: str) -> None:
    after = run_cli("udp_client.py", "quote", "apple", "3", "--json", "--server", server)
    before = run_cli("udp_client.py", "--json", "--server", server, "quote", "apple", "3")
    assert after.returncode == before.returncode == 0, after.stderr
    assert json.loads(after.stdout)["total"] == json.loads(before.stdout)["total"] == "1.50"
    items = run_cli("udp_client.py", "items", "--server", server, "--json", "--deadline", "5")
    assert items.returncode == 0 and {"item": "apple", "unit_price": "0.50"} in json.loads(items.stdout)


def test_json_means_the_same_for_every_subcommand_failures_included(server: str, tmp_path: Any) -> None:
    dead = dead_address()
    for args in (["quote", "apple", "1"], ["items"]):
        r = run_cli("udp_client.py", "--json", "--server", dead, "--deadline", "0.5", *args)
        assert r.returncode == 3 and json.loads(r.stdout)["status"] == "NO_ANSWER", r.stdout
    orders = tmp_path / "orders.csv"
    orders.write_text("item,quantity\napple,2\nkiwi,1\n")
    bulk = run_cli("udp_client.py", "--json", "bulk", str(orders), "--server", server, "--no-progress")
    rows = [json.loads(line) for line in bulk.stdout.splitlines()]
    assert [(r["item"], r["status"]) for r in rows] == [("apple", "OK"), ("kiwi", "UNKNOWN_ITEM")]
    contradiction = run_cli("udp_client.py", "--json", "bulk", "--format", "csv", str(orders))
    assert contradiction.returncode == 2 and "contradict" in contradiction.stderr


@pytest.mark.parametrize("script", ["udp_server.py", "udp_client.py", "fault_proxy.py"])
def test_version_and_verbosity_on_all_three(script: str) -> None:
    version = run_cli(script, "--version")
    assert version.returncode == 0 and "(udp-price)" in version.stdout
    extra = ["--upstream", "127.0.0.1:9"] if script == "fault_proxy.py" else []
    extra += ["items"] if script == "udp_client.py" else []
    both = run_cli(script, "-v", "-q", *extra)
    assert both.returncode == 2 and "contradict" in both.stderr and "Traceback" not in both.stderr


def test_verbose_and_quiet_change_stderr_only(server: str) -> None:
    loud = run_cli("udp_client.py", "-v", "quote", "apple", "1", "--server", server)
    assert loud.returncode == 0 and "attempt(s)" in loud.stderr and loud.stdout == "1 x apple @ 0.50 = 0.50\n"
    quiet = run_cli("udp_client.py", "items", "-q", "--server", server)
    assert quiet.returncode == 0 and quiet.stderr == "" and "apple" in quiet.stdout


NONSENSE = [
    ("udp_client.py", ["bulk", "orders.csv", "--batch", "33"], "argument --batch"),
    ("udp_client.py", ["--json", "web"], "--json does not apply"),
    ("udp_server.py", ["--listen", "127.0.0.1:0", "--port", "1"], "--listen"),
    ("udp_server.py", ["--log-level", "debug", "-q"], "log level"),
    ("udp_server.py", ["--metrics-listen", "127.0.0.1:0", "--metrics-port", "1"], "same thing"),
    ("fault_proxy.py", ["--upstream", "127.0.0.1:9", "--duration", "-1"], "--duration"),
    ("fault_proxy.py", ["--upstream", "127.0.0.1:9", "--burst-len", "3"], "--burst-len needs --burst-loss"),
    ("fault_proxy.py", ["--upstream", "127.0.0.1:9", "--reorder-gap", "3", "--reorder", "5%"], "needs --delay"),
]


@pytest.mark.parametrize(("script", "args", "says"), NONSENSE)
def test_nonsense_flag_combinations_exit_2(script: str, args: list[str], says: str) -> None:
    r = run_cli(script, *args)
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_help_shows_every_flag_with_its_default() -> None:
    proxy = run_cli("fault_proxy.py", "--help").stdout
    assert "--drop-up P" in proxy and "--delay-down TIME" in proxy and "default 127.0.0.1:9000" in proxy
    assert "--gemodel" in proxy and "--control HOST:PORT" in proxy and "examples:" in proxy
    server = run_cli("udp_server.py", "--help").stdout
    assert "--listen HOST:PORT" in server and "--metrics-listen HOST:PORT" in server
    quote = run_cli("udp_client.py", "quote", "--help").stdout
    assert "--json" in quote and "(default 127.0.0.1:9999" in quote


def test_server_listen_flag_and_json_only_stdout() -> None:
    proc, line = spawn(["udp_server.py", "--listen", "127.0.0.1:0", "--log-format", "json"], "listening")
    start = json.loads(line)
    assert start["event"] == "listening" and start["address"].startswith("127.0.0.1:")
    host, _, port = start["address"].rpartition(":")
    assert run_cli("udp_client.py", "quote", "apple", "1", "--server", f"{host}:{port}").returncode == 0
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["event"] for r in records] == ["stopped"] and records[0]["counters"]["requests"] == 1
    assert all(json.loads(line) for line in err.splitlines())


def test_text_logs_carry_iso_8601_times() -> None:
    proc, _ = start_server("--metrics-listen", "127.0.0.1:0", "-v")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    lines = err.splitlines()
    assert lines and all(ISO_LINE.match(line) for line in lines), lines


def test_proxy_log_to_stdout_keeps_stdout_json_only(server: str) -> None:
    proxy = subprocess.Popen(
        [PY, "fault_proxy.py", "--listen", "127.0.0.1:0", "--upstream", server, "--log", "-"],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proxy.stderr is not None
    banner = proxy.stderr.readline()
    assert banner.startswith("fault_proxy: 127.0.0.1:")
    listen = banner.split()[1]
    assert run_cli("udp_client.py", "quote", "apple", "1", "--server", listen).returncode == 0
    proxy.send_signal(signal.SIGTERM)
    out, err = proxy.communicate(timeout=10)
    records = [json.loads(line) for line in out.splitlines()]
    assert {r["dir"] for r in records} == {"up", "down"} and all(r["action"] == "deliver" for r in records)
    assert "fault_proxy: stopped;" in err


def scrape(url: str) -> str:
    return str(urllib.request.urlopen(url, timeout=10).read().decode())


def need_promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        reason = "needs promtool (Debian's prometheus package; .ci/run installs it)"
        rootenv.cannot_run(reason)
    return found


def test_metrics_follow_prometheus_conventions_and_pass_promtool() -> None:
    promtool = need_promtool()
    proc, addr = start_server("--metrics-listen", "127.0.0.1:0")
    try:
        assert proc.stderr is not None
        url = proc.stderr.readline().split("metrics on ")[1].strip()
        before = scrape(url)
        assert 'udp_price_replies_by_status_total{status="OK"} 0.0' in before, "series exist before the first event"
        assert 'udp_price_malformed_total{reason="bad_checksum"} 0.0' in before
        assert re.search(r'^udp_price_catalog_info\{version="\d+"\} 1\.0$', before, re.M)
        assert "udp_price_catalog_version" not in before
        assert "process_resident_memory_bytes" in before and "python_info" in before
        assert run_cli("udp_client.py", "quote", "apple", "1", "--server", f"{addr[0]}:{addr[1]}").returncode == 0
        after = scrape(url)
        assert 'udp_price_replies_by_status_total{status="OK"} 1.0' in after
        assert "udp_price_request_handling_seconds_count 1.0" in after
        assert 'udp_price_request_handling_seconds_bucket{le="+Inf"} 1.0' in after
        check = subprocess.run([promtool, "check", "metrics"], input=after, capture_output=True, text=True)
        assert check.returncode == 0 and check.stdout + check.stderr == "", check.stdout + check.stderr
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=15) as r:
            return int(r.status), dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def start_page(udp: str) -> tuple[subprocess.Popen[str], str]:
    args = ["udp_client.py", "--server", udp, "--timeout", "0.05", "--deadline", "1", "web"]
    proc, line = spawn([*args, "--listen", f"127.0.0.1:{free_port(socket.SOCK_STREAM)}"], "quote page on")
    return proc, line.split("quote page on ")[1].split()[0]


def test_quote_page_speaks_http(server: str) -> None:
    proc, url = start_page(server)
    try:
        status, _, body = get(url + "api/quote?item=apple&quantity=2")
        assert status == 200 and json.loads(body)["total"] == "1.00"
        cases = [
            ("item=kiwi&quantity=1", 404, "unknown_item"),
            ("item=apple&quantity=0", 400, "bad_quantity"),
            ("item=apple&quantity=" + "9" * 5000, 400, "bad_quantity"),
            ("item=apple&quantity=%EF%BC%93", 400, "bad_quantity"),  # a fullwidth 3: not an ASCII digit
            ("item=apple&quantity=%D9%A3", 400, "bad_quantity"),  # an Arabic-Indic 3
            ("item=" + "x" * 40 + "&quantity=1", 400, "bad_item"),
        ]
        for query, want, code in cases:
            status, headers, body = get(url + "api/quote?" + query)
            assert (status, json.loads(body)["code"]) == (want, code), query[:40]
            assert headers["Content-Type"] == "application/json"
        status, headers, body = get(url, "HEAD")
        assert status == 200 and body == b"" and int(headers["Content-Length"]) > 1000
        first = json.loads(get(url + "api/client")[2])
        for _ in range(5):
            get(url + "?item=apple&quantity=1")
        later = json.loads(get(url + "api/client")[2])
        assert later["local_port"] == first["local_port"] and later["srtt_ms"] is not None
        assert later["accepted"] >= first["accepted"] + 10, "the same client served every load (list + quote each)"
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_quote_page_with_a_dead_server_says_so_once_and_504() -> None:
    proc, url = start_page(dead_address())
    try:
        status, _, body = get(url + "api/quote?item=apple&quantity=1")
        assert status == 504 and json.loads(body)["code"] == "no_answer"
        status, _, body = get(url + "api/items")
        assert status == 504 and json.loads(body)["code"] == "no_answer"
        status, _, page = get(url + "?item=apple&quantity=1")
        assert status == 200 and page.decode().count('role="alert"') == 1
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_busy_quote_server_is_503() -> None:
    from udp_price.client.api import QuoteResult
    from udp_price.web import quote_for_page
    from udp_price.wire import Status

    class BusyClient:
        def quote(self, item: str, quantity: int) -> QuoteResult:
            return QuoteResult(item, quantity, Status.BUSY, 0, 0, 1, 1, 0.001, 1)

    _, error = quote_for_page(BusyClient(), "apple", "1")  # type: ignore[arg-type]
    assert error is not None and (int(error.status), error.code) == (503, "busy")
