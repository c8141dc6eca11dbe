"""What every peer's client shares: the catalog, the orders, the three measurements and the exact check.

A peer module gives ``serve(port)`` (prints 'listening on 127.0.0.1:PORT', serves until killed)
and ``connect(port)``, an async context manager yielding an object with ``one(item, quantity)``
-> (unit, total) and ``many([(item, quantity)])`` -> [(unit, total)], money in integer cents.
``run_client`` drives it and prints one JSON line: single-quote p50/p99, single quotes per
second with 64 in flight, bulk rows per second (read a CSV, 32 rows a request, 64 requests in
flight, write a CSV). Every answer is checked against the catalog: a
single wrong or missing answer makes ``exact`` false. Every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import csv
import json
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from udp_price.catalog import load_catalog  # noqa: E402

PRICES: dict[str, int] = dict(load_catalog(ROOT / "catalog.csv").prices)
BATCH, WINDOW, MAX_SECONDS = 32, 64, 120.0


class Peer(Protocol):
    async def one(self, item: str, quantity: int) -> tuple[int, int]: ...
    async def many(self, lines: list[tuple[str, int]]) -> list[tuple[int, int]]: ...


def price(item: str, quantity: int) -> tuple[int, int]:
    return PRICES[item], PRICES[item] * quantity


def orders(n: int) -> list[tuple[str, int]]:
    names = sorted(PRICES)
    return [(names[i * 7 % len(names)], i % 500 + 1) for i in range(n)]


async def _bounded(n: int, work: Callable[[int], Awaitable[None]], window: int) -> None:
    """work(0..n-1), ``window`` at once, in order of start; gives up after MAX_SECONDS."""
    todo = iter(range(n))

    async def worker() -> None:
        for i in todo:
            await work(i)

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(window))), MAX_SECONDS)


async def measure(peer: Peer, singles: int, inflight: int, rows: int, orders_csv: str) -> dict[str, Any]:
    wrong = 0
    lat: list[float] = []
    for item, q in orders(singles):
        t = time.perf_counter()
        got = await peer.one(item, q)
        lat.append(time.perf_counter() - t)
        wrong += got != price(item, q)
    lat.sort()
    work = orders(inflight)

    async def quote(i: int) -> None:
        nonlocal wrong
        wrong += await peer.one(*work[i]) != price(*work[i])

    t = time.perf_counter()
    await _bounded(inflight, quote, WINDOW)
    rate = inflight / (time.perf_counter() - t)
    t = time.perf_counter()
    wrong += await bulk(peer, orders_csv, rows)
    bulk_rate = rows / (time.perf_counter() - t)
    return {
        "p50_ms": lat[len(lat) // 2] * 1000,
        "p99_ms": lat[int(len(lat) * 0.99)] * 1000,
        "inflight_per_s": rate,
        "bulk_rows_per_s": bulk_rate,
        "exact": wrong == 0,
    }


async def bulk(peer: Peer, orders_csv: str, rows: int) -> int:
    """Read ``rows`` orders, quote them 32 a request with 64 requests in flight, write them in
    order; the number of wrong or missing answers."""
    with open(orders_csv, newline="") as f:
        reader = csv.reader(f)
        next(reader)
        lines = [(r[1], int(r[2]), r) for _, r in zip(range(rows), reader, strict=False)]
    chunks = [lines[i : i + BATCH] for i in range(0, len(lines), BATCH)]
    answers: list[list[tuple[int, int]]] = [[] for _ in chunks]
    stream = getattr(peer, "stream", None)
    if stream is not None:  # the library's own streaming API (it batches and windows itself)

        async def streamed() -> None:
            got = [pair async for pair in stream([(item, q) for item, q, _ in lines])]
            for i in range(len(chunks)):
                answers[i] = got[i * BATCH : (i + 1) * BATCH]

        await asyncio.wait_for(streamed(), MAX_SECONDS)
    else:

        async def one_chunk(i: int) -> None:
            answers[i] = await peer.many([(item, q) for item, q, _ in chunks[i]])

        await _bounded(len(chunks), one_chunk, WINDOW)
    wrong = 0
    with open("/dev/null", "w", newline="") as out:
        w = csv.writer(out)
        for chunk, got in zip(chunks, answers, strict=True):
            wrong += len(chunk) - len(got)
            for (item, q, cells), (unit, total) in zip(chunk, got, strict=False):
                wrong += (unit, total) != price(item, q)
                w.writerow([*cells, unit, total])
    return wrong


def run_client(connect: Callable[[int], AbstractAsyncContextManager[Peer]]) -> None:
    """argv: PORT SINGLES INFLIGHT ROWS ORDERS_CSV; prints the JSON line."""
    port, singles, inflight, rows = (int(a) for a in sys.argv[2:6])

    async def main() -> dict[str, Any]:
        async with connect(port) as peer:
            return await measure(peer, singles, inflight, rows, sys.argv[6])

    print(json.dumps(asyncio.run(main())), flush=True)  # peak RSS: read from /proc by the caller


def main(serve: Callable[[], None], connect: Callable[[int], AbstractAsyncContextManager[Peer]]) -> None:
    """``python PEER.py serve`` or ``python PEER.py client PORT SINGLES INFLIGHT ROWS ORDERS_CSV``."""
    serve() if sys.argv[1] == "serve" else run_client(connect)
