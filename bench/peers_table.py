"""udp-price against what a user would pick instead, measured side by side in one run.

    python bench/peers_table.py --rounds 3            # needs: pip install '.[bench]'

Each round runs every system once, in turn (interleaved, so load on the machine hits all of
them alike); the table shows medians over rounds, and ratios from the same run. Systems: the
udp-price server with its library client (QuoteClient.quote, quote_stream) and the ``bulk``
command with default flags; the "limit" (bench/peers/limit.py: the same server, a minimal
pipelined client, no retries); HTTP/1.1 JSON (aiohttp); gRPC (grpc.aio); CoAP (aiocoap).
Every answer is checked exact (a wrong or missing one fails the run). Loopback only; every
client run is bounded in rows and time (a timeout of --timeout seconds).

Writes docs/peers.png and the table between the peers-table markers in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "bench" / "peers"
sys.path.insert(0, str(PEERS))
from common import orders, price  # noqa: E402

# (label, module, share of the rows and quotes it is given: CoAP is ~50x slower, so it gets fewer)
SYSTEMS = [
    ("udp-price (QuoteClient; quote_stream)", "udp_peer", 1.0),
    ("limit: minimal pipelined client", "limit", 1.0),
    ("HTTP/1.1 JSON (aiohttp)", "http_aiohttp", 1.0),
    ("gRPC (grpc.aio)", "grpc_peer", 0.5),
    ("CoAP (aiocoap, 64 contexts)", "coap_peer", 0.05),
]
BULK = "udp-price `bulk` command (defaults)"
MARKERS = ("<!-- peers-table -->", "<!-- /peers-table -->")


@contextmanager
def server(module: str) -> Iterator[int]:
    args = [sys.executable, str(PEERS / f"{module}.py"), "serve"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if found is None:
            raise RuntimeError(f"{module} did not start: {line!r}")
        yield int(found.group(1))
    finally:
        proc.kill()
        proc.wait()


def child(args: list[str], timeout: float) -> tuple[int, str, str, float]:
    """Run a child to its end or ``timeout``: (exit code, stdout, stderr, its peak RSS in MB).

    The peak is the child's own VmHWM, polled from /proc: getrusage's ru_maxrss survives execve
    on Linux, so a child would report this (bigger) process's peak as its own."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(args, stdout=out, stderr=err, text=True, cwd=ROOT)
        peak = [0.0]
        watcher = threading.Thread(target=_watch_rss, args=(proc, peak), daemon=True)
        watcher.start()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"{args[1]} took more than {timeout} s") from None
        watcher.join()
        out.seek(0)
        err.seek(0)
        return proc.returncode, out.read(), err.read(), peak[0]


def _watch_rss(proc: subprocess.Popen[str], peak: list[float]) -> None:
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except OSError:
            return
        found = re.search(r"VmHWM:\s+(\d+) kB", status)
        if found:
            peak[0] = max(peak[0], int(found.group(1)) / 1024)
        time.sleep(0.02)


def run_peer(module: str, port: int, share: float, a: argparse.Namespace, orders_csv: Path) -> dict[str, Any]:
    n = [max(200, int(a.singles * share)), max(1000, int(a.inflight * share)), max(2000, int(a.rows * share))]
    args = [sys.executable, str(PEERS / f"{module}.py"), "client", str(port), *map(str, n), str(orders_csv)]
    _, out, err, rss = child(args, a.timeout)
    if not out.strip():
        raise RuntimeError(f"{module} client failed: {err.strip()[-500:]}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["rss_mb"] = rss
    if not result["exact"]:
        raise RuntimeError(f"{module}: an answer was wrong or missing")
    return result


def run_bulk_command(port: int, a: argparse.Namespace, orders_csv: Path) -> dict[str, Any]:
    """``udp_client.py bulk`` with default flags; its own summary's rows/s; output checked row by row."""
    with tempfile.TemporaryDirectory() as tmp:
        out_csv = Path(tmp) / "out.csv"
        args = [sys.executable, "udp_client.py", "--server", f"127.0.0.1:{port}", "bulk", str(orders_csv)]
        code, _, err, rss = child([*args, "-o", str(out_csv)], a.timeout)
        rate = re.search(r"([\d,]+) rows/s", err)
        if code != 0 or rate is None:
            raise RuntimeError(f"bulk exited {code}: {err.strip()[-500:]}")
        with out_csv.open(newline="") as f:
            exact = _exact(csv.DictReader(f), a.rows)
    if not exact:
        raise RuntimeError("bulk command: an output row was wrong or missing")
    return {"bulk_rows_per_s": float(rate.group(1).replace(",", "")), "rss_mb": rss}


def _exact(rows: Iterator[dict[str, str]], n: int) -> bool:
    """Is every output row OK, in order, with the exact total, and none missing or extra?"""
    count = 0
    for r, w in zip(rows, orders(n), strict=False):
        count += 1
        if r["status"] != "OK" or (r["item"], int(r["quantity"])) != w or r["total"] != _money(price(*w)[1]):
            return False
    return count == n and next(rows, None) is None


def _money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def write_orders(path: Path, n: int) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["order_id", "item", "quantity"])
        w.writerows((i, item, q) for i, (item, q) in enumerate(orders(n)))


def one_round(a: argparse.Namespace, orders_csv: Path) -> dict[str, dict[str, Any]]:
    got: dict[str, dict[str, Any]] = {}
    for label, module, share in SYSTEMS:
        if module == "udp_peer":
            with server(module) as port:  # a fresh server of its own, like every other system
                got[BULK] = run_bulk_command(port, a, orders_csv)
        with server(module) as port:
            got[label] = run_peer(module, port, share, a, orders_csv)
        for name in (BULK, label) if module == "udp_peer" else (label,):
            print(f"  {name}: {json.dumps({k: round(v, 3) for k, v in got[name].items()})}", file=sys.stderr)
    return got


def medians(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, float]]:
    return {
        name: {k: statistics.median(r[name][k] for r in rounds) for k in rounds[0][name] if k != "exact"}
        for name in rounds[0]
    }


def ratios(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, float]:
    """Medians of per-round ratios (each ratio from one round, so both sides saw the same load)."""
    ours, limit, http = SYSTEMS[0][0], SYSTEMS[1][0], SYSTEMS[2][0]
    per = {
        "bulk command / limit": [r[BULK]["bulk_rows_per_s"] / r[limit]["bulk_rows_per_s"] for r in rounds],
        "bulk command / HTTP batch": [r[BULK]["bulk_rows_per_s"] / r[http]["bulk_rows_per_s"] for r in rounds],
        "quote_stream / limit": [r[ours]["bulk_rows_per_s"] / r[limit]["bulk_rows_per_s"] for r in rounds],
        "QuoteClient in flight / limit client": [
            r[ours]["inflight_per_s"] / r[limit]["inflight_per_s"] for r in rounds
        ],
        "QuoteClient in flight / HTTP": [r[ours]["inflight_per_s"] / r[http]["inflight_per_s"] for r in rounds],
    }
    return {k: statistics.median(v) for k, v in per.items()}


def table(m: dict[str, dict[str, float]], q: dict[str, float], a: argparse.Namespace) -> str:
    def cell(row: dict[str, float], key: str, fmt: str) -> str:
        return format(row[key], fmt) if key in row else ""

    lines = [
        f"Medians of {a.rounds} interleaved rounds (`python bench/peers_table.py --rounds {a.rounds} "
        f"--rows {a.rows}`); bulk: {a.rows:,} rows (gRPC and CoAP fewer, same rate), 32 rows a request, "
        "64 in flight; every answer checked exact.",
        "",
        "| system | one quote p50 (ms) | p99 (ms) | single quotes, 64 in flight (req/s) | bulk (rows/s) "
        "| client RSS (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in m.items():
        lines.append(
            f"| {name} | {cell(row, 'p50_ms', '.3f')} | {cell(row, 'p99_ms', '.3f')} | "
            f"{cell(row, 'inflight_per_s', ',.0f')} | {cell(row, 'bulk_rows_per_s', ',.0f')} | {row['rss_mb']:.0f} |"
        )
    lines += ["", "| ratio (same run, median of per-round ratios) | value |", "|---|---|"]
    lines += [f"| {k} | {v:.2f}x |" for k, v in q.items()]
    return "\n".join(lines) + "\n"


def chart(m: dict[str, dict[str, float]], path: Path) -> None:
    """Two bar panels on one shared list of systems (linear axes; a system without a figure has no bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(m)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, key, title in zip(
        axes, ("bulk_rows_per_s", "inflight_per_s"), ("bulk rows/s", "single quotes/s, 64 in flight"), strict=True
    ):
        ax.barh(range(len(names)), [m[n].get(key, 0.0) for n in names], color="tab:blue")
        ax.set_title(title)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(names)), names)
    axes[0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def update_doc(path: Path, text: str) -> None:
    doc = path.read_text(encoding="utf-8")
    start, end = doc.index(MARKERS[0]) + len(MARKERS[0]), doc.index(MARKERS[1])
    path.write_text(doc[:start] + "\n" + text + doc[end:], encoding="utf-8")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rows", type=int, default=200_000, help="bulk rows (default 200000)")
    p.add_argument("--singles", type=int, default=2_000, help="sequential single quotes for p50/p99")
    p.add_argument("--inflight", type=int, default=20_000, help="single quotes with 64 in flight")
    p.add_argument("--timeout", type=float, default=240.0, help="seconds any one client run may take")
    p.add_argument("--no-docs", action="store_true", help="print only; do not write docs/")
    a = p.parse_args()
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        orders_csv = Path(tmp) / "orders.csv"
        write_orders(orders_csv, a.rows)
        for i in range(a.rounds):
            print(f"round {i + 1}/{a.rounds}", file=sys.stderr)
            rounds.append(one_round(a, orders_csv))
    m = medians(rounds)
    text = table(m, ratios(rounds), a)
    print(text)
    if not a.no_docs:
        chart(m, ROOT / "docs" / "peers.png")
        update_doc(ROOT / "docs" / "benchmarks.md", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
