"""What the request-handling histogram (--metrics-listen) costs on the serving loop's hot path.

Runs the loop body of ``udp_price.server.loop._drain`` without the socket calls (clock, handle,
and with timing: a second clock read and one observe) over the same quote requests, both ways,
interleaved for several rounds in one process, and prints the median nanoseconds per datagram
and the ratio. Bounded: ROUNDS x 2 x N datagrams.

    .venv/bin/python bench/histogram_cost.py
"""

from __future__ import annotations

import secrets
import statistics
import time

from udp_price.catalog import load_catalog
from udp_price.server.core import QuoteServer
from udp_price.server.timing import DurationHistogram
from udp_price.wire import QuoteRequest, encode_request

N = 50_000
ROUNDS = 15


def requests(n: int) -> list[bytes]:
    return [encode_request(QuoteRequest(secrets.randbits(64), "apple", 3)) for _ in range(n)]


def run(server: QuoteServer, data: list[bytes], timing: DurationHistogram | None) -> float:
    """Nanoseconds per datagram for the loop body, as _drain runs it."""
    clock, handle, addr = time.monotonic, server.handle_datagram, ("127.0.0.1", 40000)
    observe = timing.observe if timing is not None else None
    start = time.perf_counter_ns()
    for datagram in data:
        now = clock()
        handle(datagram, addr, now)
        if observe is not None:
            observe(clock() - now)
    return (time.perf_counter_ns() - start) / len(data)


def main() -> None:
    catalog = load_catalog("catalog.csv")
    without, with_timing, ratios = [], [], []
    for round_no in range(ROUNDS):
        # A fresh server (no limiter, no cache) each time, so neither side meets the other's replies;
        # the order alternates, so neither side always runs first on a warmer (or busier) machine.
        timings = [None, DurationHistogram()] if round_no % 2 == 0 else [DurationHistogram(), None]
        results = {t is not None: run(QuoteServer(catalog), requests(N), t) for t in timings}
        without.append(results[False])
        with_timing.append(results[True])
        ratios.append(results[True] / results[False])
    base, timed = statistics.median(without), statistics.median(with_timing)
    print(f"handling without histogram: {base:8.0f} ns/datagram (median of {ROUNDS} x {N:,})")
    print(f"handling with histogram:    {timed:8.0f} ns/datagram")
    print(f"ratio with/without:         {statistics.median(ratios):8.3f}  (median of the rounds' ratios)")


if __name__ == "__main__":
    main()
