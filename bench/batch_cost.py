"""Server CPU per datagram in the core (no sockets): a single quote against a batch of 32 lines.

    python bench/batch_cost.py            # 5 rounds alternating the two, medians

Goal: a batch of 32 costs < 4x a single quote. Both take the fast paths they would take in
service (plain, intact requests for catalog items), from 200 sources, the rate limiter and the
reply cache on (QuoteServer defaults of the CLI: see udp_price/cli/server.py).
"""

from __future__ import annotations

import secrets
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from udp_price.catalog import load_catalog  # noqa: E402
from udp_price.server.core import QuoteServer  # noqa: E402
from udp_price.server.guards import RateLimiter, ReplyCache  # noqa: E402
from udp_price.wire import BatchRequest, QuoteRequest, encode_batch_request, encode_request  # noqa: E402


def datagrams(names: list[str], n: int, batch: bool) -> list[bytes]:
    out = []
    for i in range(n):
        rid = secrets.randbits(64)
        if batch:
            lines = tuple((names[(i + j) % len(names)], j + 1) for j in range(32))
            out.append(encode_batch_request(BatchRequest(rid, lines, 1)))
        else:
            out.append(encode_request(QuoteRequest(rid, names[i % len(names)], i % 50 + 1, transmission=1)))
    return out


def cost_us(core: QuoteServer, data: list[bytes], start: float) -> float:
    t = time.process_time()
    for i, d in enumerate(data):
        if core.handle_datagram(d, (f"127.0.0.{i % 200 + 1}", 40000 + i % 20000), start + i * 1e-3) is None:
            raise RuntimeError("a request went unanswered")
    return (time.process_time() - t) / len(data) * 1e6


def main() -> None:
    limiter = RateLimiter(rate=40_000, burst=80_000)
    core = QuoteServer(load_catalog(ROOT / "catalog.csv"), limiter=limiter, cache=ReplyCache())
    names = sorted(core.catalog.prices)
    single: list[float] = []
    batch: list[float] = []
    for r in range(5):  # simulated time moves on: 1 ms between datagrams, 10 s between runs
        single.append(cost_us(core, datagrams(names, 5000, False), 1000.0 + r * 20))
        batch.append(cost_us(core, datagrams(names, 5000, True), 1010.0 + r * 20))
    s, b = statistics.median(single), statistics.median(batch)
    print(f"server core CPU per datagram: single quote {s:.1f} us, batch of 32 {b:.1f} us = {b / s:.2f}x a single")


if __name__ == "__main__":
    main()
