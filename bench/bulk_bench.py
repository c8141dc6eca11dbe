"""Bulk throughput and memory: rows/s by batch size and loss, peak RSS of the client.

Every run starts a fresh server and fault proxy (the proxy is in the path even at 0% loss, so
the ratios compare like with like) and runs `udp_client.py bulk` as a child process, whose peak
RSS comes from getrusage(RUSAGE_CHILDREN). Bounded: each run has a timeout.

    python bench/bulk_bench.py --rows 200000 --batch 1 8 16 32 --loss 0 0.1
    python bench/bulk_bench.py --rows 1000000 --batch 32 --loss 0 --no-proxy     # peak RSS
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def write_orders(path: Path, rows: int, seed: int = 1) -> None:
    with (ROOT / "catalog.csv").open(encoding="utf-8") as f:
        items = [r["item"] for r in csv.DictReader(f)]
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["order_id", "item", "quantity"])
        for i in range(rows):
            w.writerow([i, rng.choice(items), rng.randint(1, 500)])


def start(args: list[str], marker: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([PY, *args], cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if marker not in line:
        proc.kill()
        raise RuntimeError(f"{args[0]} did not start: {line!r}")
    return proc, line


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_once(orders: Path, rows: int, batch: int, loss: float, window: int, proxy: bool) -> dict[str, float]:
    server, line = start(["udp_server.py", "--port", "0"], "listening on")
    target = line.split("listening on ")[1].split()[0]
    relay = None
    try:
        if proxy:
            listen = f"127.0.0.1:{free_port()}"
            relay, _ = start(
                ["fault_proxy.py", "--listen", listen, "--upstream", target, "--drop", str(loss), "--seed", "1"],
                "fault_proxy:",
            )
            target = listen
        t0 = time.perf_counter()
        client = subprocess.Popen(
            [
                PY,
                "udp_client.py",
                "--server",
                target,
                "bulk",
                str(orders),
                "-o",
                os.devnull,
                "--batch",
                str(batch),
                "--window",
                str(window),
                "--no-progress",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert client.stderr is not None
        stderr = client.stderr.read()  # bounded: the summary is a few lines
        _, status, usage = os.wait4(client.pid, 0)  # the client's own peak RSS, not the server's
        client.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.perf_counter() - t0
    finally:
        for p in (relay, server):
            if p is not None:
                p.terminate()
                p.wait(10)
    summary = stderr
    ok = int(summary.split(" ok=")[1].split()[0])
    retrans = int(summary.split("retransmissions=")[1].split()[0])
    return {
        "batch": batch,
        "loss": loss,
        "rows": rows,
        "ok": ok,
        "seconds": round(elapsed, 3),
        "rows_per_s": round(rows / elapsed),
        "goodput_per_s": round(ok / elapsed),
        "retransmissions": retrans,
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "exit": client.returncode,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 16, 32])
    p.add_argument("--loss", type=float, nargs="+", default=[0.0, 0.1])
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--no-proxy", action="store_true", help="client straight to the server (loss must be 0)")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds over all settings; per setting the run with the median rows/s is kept",
    )
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    if not all(1 <= b <= 32 for b in args.batch):
        p.error("--batch values must be 1 to 32")
    settings = [(loss, batch) for loss in args.loss for batch in args.batch]
    runs: dict[tuple[float, int], list[dict[str, float]]] = {setting: [] for setting in settings}
    with tempfile.TemporaryDirectory() as tmp:
        orders = Path(tmp) / "orders.csv"
        write_orders(orders, args.rows)
        # Rounds over every setting, not all repeats of one setting in a row: the machine's load
        # drifts over minutes, and interleaving lets that drift touch every setting alike.
        for _ in range(args.repeat):
            for loss, batch in settings:
                runs[(loss, batch)].append(run_once(orders, args.rows, batch, loss, args.window, not args.no_proxy))
    results = []
    print(f"{'batch':>5} {'loss':>5} {'rows/s':>9} {'ok/s':>9} {'seconds':>8} {'retrans':>8} {'peak RSS MB':>11}")
    for setting in settings:
        ordered = sorted(runs[setting], key=lambda run: run["goodput_per_s"])
        r = ordered[len(ordered) // 2]  # the median run
        results.append(r)
        print(
            f"{r['batch']:>5} {r['loss']:>5.0%} {r['rows_per_s']:>9,} {r['goodput_per_s']:>9,} {r['seconds']:>8} "
            f"{r['retransmissions']:>8} {r['peak_rss_mb']:>11}",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
