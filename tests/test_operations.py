"""Operating the server: hot reload, IPv6, metrics, JSON logs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import ROOT, LineWatcher, start_server, wait_until

from udp_price.catalog import Catalog, load_catalog
from udp_price.client.api import QuoteClient, QuoteResult
from udp_price.faults.plan import FaultPlan
from udp_price.faults.relay import FaultProxy
from udp_price.server.core import QuoteServer
from udp_price.server.loop import Control, bind_socket, serve
from udp_price.server.ops import Operations

PY = sys.executable


def write_catalog(path: Path, apple: str, pear: str = "0.55") -> Catalog:
    path.write_text(f"item,price\napple,{apple}\npear,{pear}\n", encoding="utf-8")
    return load_catalog(path)


RELOAD_OUTCOMES = ("reloads.ok", "reloads.failed", "reloads.unchanged", "reloads.no_final_newline")


def reload_outcomes(core: QuoteServer) -> int:
    """How many reloads the server has finished and counted, whatever their result."""
    return sum(core.stats[name] for name in RELOAD_OUTCOMES)


def test_reloads_under_load_never_give_a_wrong_quote(tmp_path: Path) -> None:
    path = tmp_path / "catalog.csv"
    versions = {c.version: c for c in (write_catalog(path, "1.00"), write_catalog(path, "2.00"))}
    first = write_catalog(path, "1.00")
    core = QuoteServer(first)
    sock, control = bind_socket("127.0.0.1", 0), Control()
    # As the command line does: the reload worker wakes the loop when a result is ready, so it is
    # counted (and swapped in) even when no datagram arrives.
    ops = Operations(core, str(path), wake=control.wake)
    thread = threading.Thread(target=serve, args=(sock, core, control), kwargs={"duties": ops}, daemon=True)
    thread.start()
    reloads_done, reloader_failed = threading.Event(), []
    steps = ("2.00", "1.00", "2.00", "bad", "2.00", "1.00")
    results: list[QuoteResult] = []

    def reload_and_see(done: int) -> None:
        control.request_reload()
        wait_until(lambda: reload_outcomes(core) == done, f"reload {done} to be counted")
        # Swapped in (or refused) before it is counted: a quote from now on shows it in use.
        serving, since = core.catalog.version, len(results)
        wait_until(lambda: any(r.catalog_version == serving for r in results[since:]), f"quotes after {done}")

    def reloader() -> None:
        # One reload at a time, each awaited: requests made while a reload runs are merged into one
        # more run by design (udp_price.server.ops), and a file rewritten while the worker reads it
        # is a torn read - either would make the count below depend on thread timing.
        try:
            for done, step in enumerate(steps, start=1):
                if step == "bad":
                    path.write_text("item,price\napple,-1\n", encoding="utf-8")  # a bad file mid-run
                else:
                    write_catalog(path, step)
                reload_and_see(done)
        except AssertionError as e:  # a thread's failure would only be a warning: the test reports it
            reloader_failed.append(e)
        finally:
            reloads_done.set()

    async def load() -> None:
        # At least 3000 quotes, and on until every reload is done, so all of them happen under load
        # (bounded: 30000 quotes or 60 s).
        deadline = time.monotonic() + 60

        def more() -> bool:
            if len(results) >= 30000 or time.monotonic() > deadline:
                return False
            return len(results) < 3000 or not reloads_done.is_set()

        async with QuoteClient(sock.getsockname()[:2]) as client:

            async def worker() -> None:
                while more():
                    results.append(await client.quote("apple", len(results) % 50 + 1))

            await asyncio.gather(*(worker() for _ in range(16)))

    side = threading.Thread(target=reloader)
    side.start()
    try:
        asyncio.run(load())
        load_over_after_reloads = reloads_done.is_set()
        side.join(30)
    finally:
        control.stop()
        thread.join(5)
        ops.close()  # as the command line does after serving: counts a reload still in flight
        sock.close()
        control.close()
    assert not reloader_failed and not side.is_alive() and not thread.is_alive(), reloader_failed
    assert load_over_after_reloads, "the load ran out (30000 quotes or 60 s) before the reloads were done"
    assert len(results) >= 3000 and all(r.ok for r in results)
    for r in results:
        assert r.total == versions[r.catalog_version].prices["apple"] * r.quantity
    assert {r.catalog_version for r in results} == set(versions), "both catalogs served during the run"
    outcomes = {name: core.stats[name] for name in RELOAD_OUTCOMES}
    assert outcomes == {"reloads.ok": 5, "reloads.failed": 1, "reloads.unchanged": 0, "reloads.no_final_newline": 0}
    assert core.catalog.prices["apple"] == 100, "the last good file (1.00) is what is served"


def quote(addr: tuple[str, int], item: str = "apple", qty: int = 1) -> QuoteResult:
    async def run() -> QuoteResult:
        async with QuoteClient(addr) as client:
            return await client.quote(item, qty)

    return asyncio.run(run())


def test_sighup_reload_and_bad_file_rejected_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "catalog.csv"
    v1 = write_catalog(path, "1.00")
    proc, addr = start_server("--catalog", str(path))
    log = LineWatcher(proc)
    try:
        assert (quote(addr).total, quote(addr).catalog_version) == (100, v1.version)
        v2 = write_catalog(path, "1.25")
        proc.send_signal(signal.SIGHUP)
        log.wait(lambda line: "catalog reloaded" in line, "the reload to be done")
        assert (quote(addr, qty=4).total, quote(addr).catalog_version) == (500, v2.version)
        path.write_text("item,price\napple,1.234\napple,2\n", encoding="utf-8")
        proc.send_signal(signal.SIGHUP)
        # Quote only once the server says it refused the file: before that, old prices prove nothing.
        log.wait(lambda line: "catalog reload rejected" in line, "the bad file to be refused")
        after = quote(addr, qty=4)
        assert (after.total, after.catalog_version) == (500, v2.version), "a bad file changes nothing"
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    err = log.text()
    assert "catalog reloaded: 2 items" in err
    assert "catalog reload rejected" in err
    assert "line 2: item 'apple': price '1.234' has more than 2 decimals" in err
    assert "line 3: duplicate item 'apple' (first on line 2)" in err
    assert "reloads.failed=1" in out and "reloads.ok=1" in out


def test_watch_reloads_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "catalog.csv"
    write_catalog(path, "1.00")
    proc, addr = start_server("--catalog", str(path), "--watch")
    log = LineWatcher(proc)
    try:
        assert quote(addr).total == 100
        new = write_catalog(path, "3.00", pear="0.99")
        os.utime(path, (time.time() + 5, time.time() + 5))  # mtime must differ even on coarse clocks
        # Rewritten in place, so loaded once it stayed unchanged for the settle interval: wait for
        # the server to say so (bounded) instead of polling quotes against a clock.
        log.wait(lambda line: "catalog reloaded" in line, "the watcher to load the changed file", timeout_s=30)
        after = quote(addr)
        assert (after.total, after.catalog_version) == (300, new.version)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert "reloads.ok=1" in out and "reloads.failed" not in out


def ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_ipv6_server_client_and_proxy() -> None:
    if not ipv6_available():
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but ::1 cannot be bound")
        pytest.skip("this machine has no IPv6 loopback")
    proc, addr = start_server("--host", "::1")
    try:
        assert addr[0] == "::1"
        r = subprocess.run(
            [PY, "udp_client.py", "--server", f"[::1]:{addr[1]}", "quote", "apple", "3"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert (r.returncode, r.stdout) == (0, "3 x apple @ 0.50 = 1.50\n"), r.stderr

        async def via_proxy() -> QuoteResult:
            async with FaultProxy(FaultPlan.both(seed=3, drop=0.2), upstream=addr, listen=("::1", 0)) as proxy:
                assert proxy.address[0] == "::1"
                async with QuoteClient(proxy.address) as client:
                    return await client.quote("pear", 2)

        assert asyncio.run(via_proxy()).total == 110
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_metrics_and_json_logs(tmp_path: Path) -> None:
    proc, addr = start_server("--metrics-port", "0", "--log-format", "json", "--stats-interval", "0.2")
    log = LineWatcher(proc)
    try:
        first = json.loads(log.wait(lambda line: True, "the first log line"))
        assert first["event"] == "metrics"
        url = first["msg"].split("metrics on ")[1]
        quote(addr)
        quote(addr, "kiwi")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"garbage", addr)
        # The garbage has no reply to wait for: wait for the stats record that counts it.
        log.wait(lambda line: json.loads(line).get("counters", {}).get("requests") == 3, "a stats record of 3")
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    err = log.text()
    assert "udp_price_requests_total 3.0" in text
    assert 'udp_price_replies_by_status_total{status="OK"} 1.0' in text
    assert 'udp_price_replies_by_status_total{status="UNKNOWN_ITEM"} 1.0' in text
    assert 'udp_price_malformed_total{reason="bad_length"} 1.0' in text
    assert "udp_price_catalog_items 45.0" in text
    records = [json.loads(line) for line in err.splitlines()]
    stats = [r for r in records if r["event"] == "stats"]
    assert stats and stats[-1]["counters"]["requests"] == 3
    assert all({"ts", "level", "event", "msg"} <= set(r) for r in records)
    assert url.startswith("http://127.0.0.1:"), "metrics bind loopback only"
