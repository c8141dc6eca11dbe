"""The benchmark: udp-price against its limit and its baselines, ratios from one run.

    python bench/run.py                  # full run, about 6 minutes on 2 cores
    python bench/run.py --quick          # smaller counts, for a smoke test

Everything runs on loopback, every loop is bounded in count and time, and every ratio
compares numbers measured in this same run on this same machine:

1. limit: a bare stdlib UDP echo server, driven by a pipelined load generator
2. udp-price server, single quote requests, the same generator and the same datagrams
3. the original design: TCP connection per quote + pickle, sequential client
4. a stop-and-wait UDP client (QuoteClient, one request in flight) against udp-price
5. udp-price bulk on a 200,000-row CSV at --batch 1 and the best batch, 0/2/10/30% loss
   each way through the fault proxy (in the path at 0% too)
6. single-quote latency p50/p99/p99.9 against the echo server's round trip

Writes docs/bench.json and, if matplotlib is installed (pip install '.[bench]'), docs/bench.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from baselines import tcp_pickle_quote

from udp_price.client.api import QuoteClient
from udp_price.wire import QuoteRequest, encode_request

ROOT = Path(__file__).resolve().parent.parent

PY = sys.executable
ITEMS = ["apple", "banana", "orange", "pear"]


@contextmanager
def process(*args: str) -> Iterator[tuple[str, int]]:
    """Start a server process that prints '... listening on HOST:PORT ...'; stop it afterwards."""
    proc = subprocess.Popen([PY, *args], cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    try:
        where = line.split("listening on ")[1].split()[0]
        host, _, port = where.rpartition(":")
        yield host, int(port)
    finally:
        proc.terminate()
        proc.wait(10)


def udp_price_server() -> Any:
    # Rate limit raised out of the way (one source sends everything) but its code path still runs.
    return process("udp_server.py", "--port", "0", "--rate", "100000000", "--burst", "100000000")


def requests(n: int) -> list[bytes]:
    return [encode_request(QuoteRequest(i + 1, ITEMS[i % 4], i % 100 + 1)) for i in range(n)]


def pipelined(addr: tuple[str, int], datagrams: list[bytes], window: int = 32, max_seconds: float = 30) -> float:
    """Replies per second with up to ``window`` datagrams in flight; a lost one is replaced on a timeout."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(addr)
    sock.settimeout(0.1)
    send, recv = sock.send, sock.recv
    n, sent, got = len(datagrams), 0, 0
    start = time.perf_counter()
    for sent in range(min(window, n)):
        send(datagrams[sent])
    sent += 1
    while got < n and time.perf_counter() - start < max_seconds:
        try:
            recv(2048)
            got += 1
            if sent < n:
                send(datagrams[sent])
                sent += 1
        except TimeoutError:
            for _ in range(min(window, n - sent)):  # the window drained by losses: refill it
                send(datagrams[sent])
                sent += 1
            if sent >= n:
                break
    elapsed = time.perf_counter() - start
    sock.close()
    return got / elapsed


def round_trips(addr: tuple[str, int], datagrams: list[bytes]) -> list[float]:
    """Stop-and-wait round trips in seconds, raw sockets: the server's share of latency."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(addr)
    sock.settimeout(1.0)
    out = []
    for data in datagrams:
        t0 = time.perf_counter()
        sock.send(data)
        try:
            sock.recv(2048)
        except TimeoutError:
            continue
        out.append(time.perf_counter() - t0)
    sock.close()
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def stop_and_wait_client(addr: tuple[str, int], n: int) -> tuple[float, list[float]]:
    """QuoteClient, one quote at a time: (quotes/s, latencies in seconds)."""

    async def run() -> tuple[float, list[float]]:
        async with QuoteClient(addr) as client:
            lat = []
            start = time.perf_counter()
            for i in range(n):
                lat.append((await client.quote(ITEMS[i % 4], i % 100 + 1)).latency_s)
            return n / (time.perf_counter() - start), lat

    return asyncio.run(run())


def tcp_pickle_rate(n: int) -> float:
    with process("bench/baselines.py", "tcp-pickle") as addr:
        start = time.perf_counter()
        for i in range(n):
            tcp_pickle_quote(addr, ITEMS[i % 4], i % 100 + 1)
        return n / (time.perf_counter() - start)


def server_section(n: int, runs: int) -> dict[str, Any]:
    """Echo and udp-price both running; measured in alternating rounds so drift hits both alike."""
    data = requests(n)
    echo_rates: list[float] = []
    price_rates: list[float] = []
    echo_rtt: list[float] = []
    price_rtt: list[float] = []
    with process("bench/baselines.py", "echo") as echo, udp_price_server() as server:
        for _ in range(runs):
            echo_rates.append(pipelined(echo, data))
            price_rates.append(pipelined(server, requests_fresh(n)))
            echo_rtt += round_trips(echo, data[:5000])
            price_rtt += round_trips(server, requests_fresh(5000))
        sw_rate, sw_lat = stop_and_wait_client(server, 3000)
    echo_rate, price_rate = statistics.median(echo_rates), statistics.median(price_rates)
    return {
        "echo_requests_per_s": round(echo_rate),
        "server_requests_per_s": round(price_rate),
        "server_vs_echo": round(price_rate / echo_rate, 3),
        "echo_rtt_ms": {q: round(percentile(echo_rtt, p) * 1000, 4) for q, p in PCTS.items()},
        "server_rtt_ms": {q: round(percentile(price_rtt, p) * 1000, 4) for q, p in PCTS.items()},
        "quoteclient_latency_ms": {q: round(percentile(sw_lat, p) * 1000, 4) for q, p in PCTS.items()},
        "stop_and_wait_quotes_per_s": round(sw_rate),
    }


_fresh_base = [10_000_000]


def requests_fresh(n: int) -> list[bytes]:
    """New request ids each time, so the server's reply cache never answers for us."""
    base = _fresh_base[0]
    _fresh_base[0] += n
    return [encode_request(QuoteRequest(base + i, ITEMS[i % 4], i % 100 + 1)) for i in range(n)]


PCTS = {"p50": 0.5, "p99": 0.99, "p99.9": 0.999}


def bulk_runs(orders_rows: int, batches: list[int], losses: list[float], repeat: int = 3) -> list[dict[str, Any]]:
    """bulk_bench.py in a fresh, small process: the client's peak RSS (ru_maxrss) survives fork
    and exec, so a client forked from this process, which holds 100,000 encoded requests, would
    report this process's size instead of its own."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bulk.json"
        subprocess.run(
            [
                PY,
                "bench/bulk_bench.py",
                "--rows",
                str(orders_rows),
                "--batch",
                *map(str, batches),
                "--loss",
                *map(str, losses),
                "--json",
                str(out),
            ],
            cwd=ROOT,
            check=True,
            timeout=1800,
            stdout=subprocess.DEVNULL,
        )
        runs: list[dict[str, Any]] = json.loads(out.read_text())
    return runs


def bulk_section(rows: int, losses: list[float], batches: list[int]) -> dict[str, Any]:
    """Best batch size at 0% loss, then that batch across the loss rates and batch 1 at 0 and 10%,
    each set interleaved with its own 0% baseline so the goodput ratios compare like with like."""
    by_batch = {r["batch"]: r for r in bulk_runs(rows, [b for b in batches if b != 1], [0.0])}
    best = max(by_batch, key=lambda b: by_batch[b]["rows_per_s"])
    curve = {r["loss"]: r for r in bulk_runs(rows, [best], losses)}
    batch1 = {r["loss"]: r for r in bulk_runs(rows, [1], [0.0, 0.1])}
    by_batch[1] = batch1[0.0]
    return {
        "rows": rows,
        "best_batch": best,
        "by_batch_at_0": by_batch,
        "best_by_loss": curve,
        "batch1_by_loss": batch1,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small counts: a smoke test, not a measurement")
    p.add_argument("--out", default=str(ROOT / "docs"), help="where bench.json and bench.png go (default docs/)")
    p.add_argument(
        "--server-only",
        action="store_true",
        help="only the server against the bare echo server (single quotes, limiter and cache on): ~1 minute",
    )
    args = p.parse_args()
    n, runs, rows = (20_000, 1, 20_000) if args.quick else (100_000, 3, 200_000)
    if args.server_only:
        s = server_section(n, runs)
        print(f"echo {s['echo_requests_per_s']:,} req/s, udp-price {s['server_requests_per_s']:,} req/s: ", end="")
        print(f"{s['server_vs_echo']:.2f} x echo (goal >= 0.75)")
        return 0
    t0 = time.perf_counter()
    print(
        f"udp-price benchmark on {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        flush=True,
    )
    server = server_section(n, runs)
    print(f"  server: {server}", flush=True)
    tcp = tcp_pickle_rate(500 if args.quick else 3000)
    print(f"  tcp+pickle: {tcp:.0f} quotes/s", flush=True)
    bulk = bulk_section(rows, [0.0, 0.02, 0.1, 0.3], [1, 8, 16, 32])
    result = {
        "machine": machine(),
        "server": server,
        "tcp_pickle_quotes_per_s": round(tcp),
        "bulk": bulk,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    result["targets"] = targets(result)
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    chart(result, out / "bench.png")
    return 0


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()}


def targets(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    s, b = r["server"], r["bulk"]
    best0 = b["best_by_loss"]["0.0" if "0.0" in b["best_by_loss"] else 0.0]
    best10 = b["best_by_loss"]["0.1" if "0.1" in b["best_by_loss"] else 0.1]
    checks = {
        "server >= 0.6 x echo": (s["server_vs_echo"], 0.6),
        "bulk best >= 20 x tcp+pickle": (best0["rows_per_s"] / r["tcp_pickle_quotes_per_s"], 20),
        "bulk best >= 5 x stop-and-wait": (best0["rows_per_s"] / s["stop_and_wait_quotes_per_s"], 5),
        "goodput 10% >= 0.7 x 0%": (best10["goodput_per_s"] / best0["goodput_per_s"], 0.7),
        "p50 <= 1.5 x echo rtt, as 1.5 x echo p50 / udp-price p50": (
            s["echo_rtt_ms"]["p50"] * 1.5 / s["server_rtt_ms"]["p50"],
            1.0,
        ),
    }
    return {k: {"value": round(v, 3), "needed": need, "met": v >= need} for k, (v, need) in checks.items()}


def table(r: dict[str, Any]) -> str:
    s, b = r["server"], r["bulk"]
    lines = [
        "| measure | value | ratio |",
        "|---|---|---|",
        f"| echo server (limit), pipelined | {s['echo_requests_per_s']:,} req/s | 1.00 |",
        f"| udp-price server, same generator | {s['server_requests_per_s']:,} req/s "
        f"| {s['server_vs_echo']:.2f} x echo |",
        f"| original TCP + pickle, sequential | {r['tcp_pickle_quotes_per_s']:,} quotes/s | |",
        f"| stop-and-wait QuoteClient | {s['stop_and_wait_quotes_per_s']:,} quotes/s | |",
    ]
    best = b["best_batch"]
    for loss, run in b["best_by_loss"].items():
        lines.append(
            f"| bulk --batch {best}, {float(loss):.0%} loss each way | {run['goodput_per_s']:,} rows/s "
            f"({run['seconds']} s, {run['peak_rss_mb']} MB) | "
            f"{run['goodput_per_s'] / r['tcp_pickle_quotes_per_s']:.0f} x tcp+pickle, "
            f"{run['goodput_per_s'] / s['stop_and_wait_quotes_per_s']:.1f} x stop-and-wait |"
        )
    for loss, run in b["batch1_by_loss"].items():
        lines.append(f"| bulk --batch 1, {float(loss):.0%} loss each way | {run['goodput_per_s']:,} rows/s | |")
    for name, pct in (
        ("echo", s["echo_rtt_ms"]),
        ("udp-price", s["server_rtt_ms"]),
        ("QuoteClient end to end", s["quoteclient_latency_ms"]),
    ):
        lines.append(f"| {name} round trip p50 / p99 / p99.9 | {pct['p50']} / {pct['p99']} / {pct['p99.9']} ms | |")
    lines.append("")
    for name, t in r["targets"].items():
        lines.append(f"- {name}: {t['value']} (goal {t['needed']}) {'reached' if t['met'] else 'not reached'}")
    return "\n".join(lines)


def chart(r: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no chart; pip install '.[bench]')")
        return
    curve = r["bulk"]["best_by_loss"]
    losses = [float(k) * 100 for k in curve]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(losses, [v["goodput_per_s"] for v in curve.values()], "o-")
    a.set_xlabel("loss each way (%)")
    a.set_ylabel("rows/s (ok rows)")
    a.set_title(f"bulk throughput, --batch {r['bulk']['best_batch']}")
    a.set_ylim(bottom=0)
    b.plot(losses, [v["seconds"] for v in curve.values()], "o-", color="tab:red")
    b.set_xlabel("loss each way (%)")
    b.set_ylabel("seconds")
    b.set_title(f"completion time, {r['bulk']['rows']:,} rows")
    b.set_ylim(bottom=0)
    fig.suptitle(f"udp-price on {r['machine']['cpu']}, {r['machine']['cores']} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print(f"chart: {path}")


if __name__ == "__main__":
    sys.exit(main())
