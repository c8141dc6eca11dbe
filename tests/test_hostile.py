"""Hostile input and abuse against a live server: fuzzing, floods, retry-after, and the reply cache."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from helpers import CATALOG, ROOT, RunningServer, expected_prices, serving

from udp_price.catalog import load_catalog
from udp_price.client.api import NoAnswer, QuoteClient, QuoteResult
from udp_price.client.retry import RetryPolicy
from udp_price.server.core import QuoteServer
from udp_price.server.guards import RateLimiter

PRICES = expected_prices()


def test_live_fuzz_short_run() -> None:
    """The CI-sized run of fuzz/live_fuzz.py; docs/testing.md reports the 200,000-datagram run."""
    r = subprocess.run(
        [sys.executable, "fuzz/live_fuzz.py", "--count", "20000", "--max-seconds", "90", "--seed", "7"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    report = json.loads(r.stdout.splitlines()[-1])
    assert r.returncode == 0 and report["ok"], report
    assert report["sent"] == 20000 and report["replies"] > 1000
    assert report["max_reply_to_request_ratio"] <= 1.0
    assert report["server_tracebacks"] == 0 and report["wrong_quotes_after"] == 0


@pytest.fixture
def limited_server() -> Iterator[RunningServer]:
    """A server allowing each source IP 300 requests/s (bursts of 100)."""
    with serving(QuoteServer(load_catalog(CATALOG), limiter=RateLimiter(rate=300, burst=100))) as running:
        yield running


def test_flooded_server_still_serves_another_source(limited_server: RunningServer) -> None:
    host, port = limited_server.address
    flood = subprocess.Popen(
        [sys.executable, "fuzz/flood.py", f"{host}:{port}", "--seconds", "6", "--count", "2000000"],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
    )

    async def victim() -> list[QuoteResult | NoAnswer]:
        for _ in range(2000):  # wait (at most ~20 s) until the flood has got going: the limiter drops
            if limited_server.core.stats["rate_limited.dropped"] > 0:
                break
            await asyncio.sleep(0.01)
        items = sorted(PRICES)
        out: list[QuoteResult | NoAnswer] = []
        # 127.0.0.2 is loopback too, but another source IP: its own rate-limit bucket.
        async with QuoteClient((host, port), local_addr=("127.0.0.2", 0)) as client:
            for i in range(300):
                try:
                    out.append(await client.quote(items[i % len(items)], i + 1))
                except NoAnswer as e:
                    out.append(e)
        return out

    try:
        results = asyncio.run(victim())
    finally:
        flood_out, _ = flood.communicate(timeout=30)
    flood_report = json.loads(flood_out)
    good = [r for r in results if isinstance(r, QuoteResult) and r.total == PRICES[r.item] * r.quantity]
    rate = len(good) / len(results)
    print(
        f"victim success {rate:.2%} while the flood sent {flood_report['sent']} datagrams, "
        f"server rate-limited {limited_server.core.stats['rate_limited.dropped']} silently and "
        f"{limited_server.core.stats['rate_limited.busy']} with BUSY"
    )
    assert flood_report["sent"] > 50_000, "the flood must really be a flood"
    assert limited_server.core.stats["rate_limited.dropped"] > 10_000
    assert flood_report["busy_replies"] > 0
    assert len(good) == len(results) == 300, "every quote of the other source exact (the promise is all of them)"


def test_quotes_complete_under_rate_limiting(limited_server: RunningServer) -> None:
    async def run() -> tuple[list[QuoteResult], dict[str, int]]:
        async with QuoteClient(limited_server.address, RetryPolicy(deadline_s=10)) as client:
            results = await asyncio.gather(*(client.quote("pear", q) for q in range(1, 401)))
            return list(results), dict(client.stats)

    results, stats = asyncio.run(run())
    assert [r.total for r in results] == [55 * q for q in range(1, 401)]
    assert stats["busy"] > 0, "400 at once from one source must meet the 100-request burst"


def test_client_waits_the_retry_after_it_is_told() -> None:
    """A server that answers every first attempt BUSY with retry-after 300 ms: no second attempt
    of any request may arrive sooner (a lower bound, so a slow machine cannot break it)."""
    from test_client_integration import fake_server, real_reply

    from udp_price.wire import QuoteReply, Status, decode_request, encode_reply

    seen: dict[int, list[float]] = {}

    def busy_first(data: bytes, addr: tuple[str, int], sock: socket.socket, n: int) -> None:
        req = decode_request(data)
        arrivals = seen.setdefault(req.request_id, [])
        arrivals.append(time.monotonic())
        if len(arrivals) == 1:
            sock.sendto(
                encode_reply(
                    QuoteReply(
                        req.request_id,
                        Status.BUSY,
                        req.item,
                        req.quantity,
                        retry_after_ms=300,
                        transmission=req.transmission,
                    )
                ),
                addr,
            )
        else:
            sock.sendto(real_reply(data), addr)

    async def run(addr: tuple[str, int]) -> list[QuoteResult]:
        async with QuoteClient(addr) as client:
            return list(await asyncio.gather(*(client.quote("apple", q) for q in range(1, 21))))

    with fake_server(busy_first) as addr:
        results = asyncio.run(run(addr))
    assert [r.total for r in results] == [50 * q for q in range(1, 21)]
    gaps = [times[1] - times[0] for times in seen.values()]
    assert len(gaps) == 20 and min(gaps) >= 0.3, f"retransmitted before retry-after: {min(gaps):.3f} s"
