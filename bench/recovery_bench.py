"""Loss recovery, measured: every row right or explicitly failed, and what it cost in retransmissions.

Each scenario starts a fresh server (a child process) and quotes a CSV of rows through the fault
proxy with the bulk pipeline (QuoteClient + run_bulk, batch 32, window 64), checking every total
against catalog.csv. It prints one table row per scenario: OK rows, retransmissions per request
next to the minimum the loss rate requires, 1 / ((1 - p_up)(1 - p_down)) - 1, and the share of
retransmissions proven spurious by the echoed transmission number. Bounded: every run has a
time limit, every load a row count.

    python bench/recovery_bench.py                      # all scenarios, 10 seeds x 20,000 rows for loss
    python bench/recovery_bench.py --seeds 2 --rows 5000 --only loss30 delay0.2
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from udp_price.bulk.pipeline import BulkOptions, read_rows, run_bulk
from udp_price.bulk.reader import Row
from udp_price.bulk.results import RowResult
from udp_price.client.api import QuoteClient
from udp_price.client.recovery import RetryBudget
from udp_price.client.retry import RetryPolicy
from udp_price.faults.plan import FaultPlan, Faults
from udp_price.faults.relay import FaultProxy

ROOT = Path(__file__).resolve().parent.parent

PY = sys.executable
RUN_LIMIT_S = 180.0
with (ROOT / "catalog.csv").open(encoding="utf-8", newline="") as _f:
    PRICES = {r["item"]: int(Decimal(r["price"]) * 100) for r in csv.DictReader(_f)}


def orders(rows: int, seed: int) -> str:
    rng, items = random.Random(seed), sorted(PRICES)
    lines = ["order_id,item,quantity"] + [f"{i},{rng.choice(items)},{rng.randint(1, 500)}" for i in range(rows)]
    return "\n".join(lines) + "\n"


class CheckingSink:
    """Counts statuses; a row marked OK whose total is not price x quantity is counted as wrong."""

    def __init__(self) -> None:
        self.status: dict[str, int] = {}
        self.wrong = 0

    def write(self, row: Row, outcome: RowResult) -> None:
        self.status[outcome.status] = self.status.get(outcome.status, 0) + 1
        if outcome.status == "OK" and outcome.total != PRICES[row.item] * row.quantity:
            self.wrong += 1


class Server:
    """udp_server.py as a child process; restartable on the same port."""

    def __init__(self) -> None:
        self.port = 0
        self.proc = self._start()

    def _start(self) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [PY, "udp_server.py", "--port", str(self.port), "--log-level", "warning"],
            cwd=ROOT,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "listening on" not in line:
            proc.kill()
            raise RuntimeError(f"server did not start: {line!r}")
        self.port = int(line.split("listening on ")[1].split()[0].rsplit(":", 1)[1])
        return proc

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    async def restart_after(self, start_s: float, down_s: float) -> None:
        await asyncio.sleep(start_s)
        await asyncio.to_thread(self.stop)
        await asyncio.sleep(down_s)
        self.proc = await asyncio.to_thread(self._start)


@dataclass
class Result:
    rows: int = 0
    ok: int = 0
    wrong: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    retransmissions: int = 0
    spurious: int = 0
    seconds: float = 0.0
    icmp_errors: int = 0

    def add(self, other: Result) -> None:
        self.rows += other.rows
        self.ok += other.ok
        self.wrong += other.wrong
        for k, v in other.failed.items():
            self.failed[k] = self.failed.get(k, 0) + v
        self.requests += other.requests
        self.retransmissions += other.retransmissions
        self.spurious += other.spurious
        self.icmp_errors += other.icmp_errors
        self.seconds = max(self.seconds, other.seconds)


Side = Callable[[Server], Coroutine[Any, Any, None]]


async def run_bulk_once(
    rows: int, seed: int, plan: FaultPlan | None, policy: RetryPolicy, side: Side | None = None
) -> Result:
    server = Server()
    try:
        sink = CheckingSink()
        _, parsed = read_rows(io.StringIO(orders(rows, seed)))

        async def go(target: tuple[str, int]) -> tuple[float, dict[str, int]]:
            async with QuoteClient(target, policy, budget=RetryBudget()) as client:
                started = time.monotonic()
                task = asyncio.create_task(side(server)) if side is not None else None
                await run_bulk(parsed, client, sink, BulkOptions(window=64, batch=32))
                took = time.monotonic() - started
                if task is not None:
                    await task
                return took, dict(client.stats)

        if plan is None:
            took, stats = await asyncio.wait_for(go(server.address), RUN_LIMIT_S)
        else:
            async with FaultProxy(plan, upstream=server.address) as proxy:
                took, stats = await asyncio.wait_for(go(proxy.address), RUN_LIMIT_S)
    finally:
        server.stop()
    failed = {k: v for k, v in sink.status.items() if k != "OK"}
    retrans = stats.get("retransmissions", 0)
    return Result(
        rows, sink.status.get("OK", 0), sink.wrong, failed, stats.get("sent", 0) - retrans, retrans,
        stats.get("spurious", 0), took, stats.get("icmp_errors", 0),
    )  # fmt: skip


def dead_port_cli(rows: int) -> tuple[int, float]:
    """`udp_client.py bulk` against a port nobody listens on (no proxy: it would swallow the ICMP)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    r = subprocess.run(
        [PY, "udp_client.py", "--server", f"127.0.0.1:{port}", "bulk", "-", "--no-progress", "-o", "/dev/null"],
        cwd=ROOT, input=orders(rows, 1), text=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return r.returncode, time.monotonic() - started


def minimum(p_up: float, p_down: float) -> float:
    return 1 / ((1 - p_up) * (1 - p_down)) - 1


@dataclass(frozen=True)
class Scenario:
    description: str
    p_up: float
    p_down: float
    plan: Callable[[int], FaultPlan | None]
    """The proxy's faults for a seed; None runs without the proxy."""
    side: Side | None = None
    """Run alongside the bulk run (restarts the server)."""


def both(**faults: Any) -> Callable[[int], FaultPlan]:
    return lambda seed: FaultPlan.both(seed=seed, **faults)


SCENARIOS: dict[str, Scenario] = {
    "loss30": Scenario(
        "30% loss + 20% dup + 20% reorder each way", 0.3, 0.3, both(drop=0.3, duplicate=0.2, reorder=0.2)
    ),
    "delay0.2": Scenario("0.2 s delay each way, no loss", 0, 0, both(delay_s=0.2)),
    "delay0.5": Scenario("0.5 s delay each way, no loss", 0, 0, both(delay_s=0.5)),
    "blackhole": Scenario("blackhole 0-2 s at the start, --deadline 10", 0, 0, both(blackhole=((0.0, 2.0),))),
    "restart": Scenario(
        "server restarted on its port mid-run (down 0.5 s), via proxy",
        0, 0, lambda seed: FaultPlan(seed=seed), lambda srv: srv.restart_after(0.2, 0.5),
    ),
    "restart-direct": Scenario(
        "the same, no proxy (ICMP reaches the client)",
        0, 0, lambda seed: None, lambda srv: srv.restart_after(0.05, 0.5),
    ),
    "corrupt30": Scenario("30% of datagrams corrupted each way", 0.3, 0.3, both(corrupt=0.3)),
    "dead": Scenario(
        "dead server (blackhole forever), --deadline 10",
        1.0, 1.0, lambda seed: FaultPlan(up=Faults(blackhole=((0.0, None),)), seed=seed),
    ),
}  # fmt: skip


def fmt_row(desc: str, runs: int, r: Result, p_up: float, p_down: float) -> str:
    per_request = r.retransmissions / r.requests if r.requests else 0.0
    spurious = f"{r.spurious / r.retransmissions:.1%}" if r.retransmissions else "-"
    floor = f"{minimum(p_up, p_down):.3f}" if p_up < 1 else "-"
    failed = ", ".join(f"{k} {v:,}" for k, v in sorted(r.failed.items())) or "0"
    return (
        f"| {desc} | {runs} | {r.rows:,} | {r.ok:,} ({r.ok / r.rows:.1%}) | {failed} | {r.wrong} | "
        f"{r.requests:,} | {r.retransmissions:,} | {per_request:.3f} | {floor} | {spurious} | {r.seconds:.1f} s |"
    )


async def main_async(args: argparse.Namespace) -> list[str]:
    lines = [
        "| scenario | runs | rows | OK | failed | wrong | requests | retransmissions | per request | "
        "minimum | proven spurious | slowest run |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, sc in SCENARIOS.items():
        if args.only and name not in args.only:
            continue
        seeds = range(1, args.seeds + 1) if name == "loss30" else range(1, 2)
        total = Result()
        for seed in seeds:
            policy = RetryPolicy(deadline_s=10.0)
            total.add(await run_bulk_once(args.rows, seed, sc.plan(seed), policy, sc.side))
        lines.append(fmt_row(sc.description, len(seeds), total, sc.p_up, sc.p_down))
        print(lines[-1], flush=True)
        if name.startswith("restart"):
            print(f"{name}: ICMP errors seen by the client: {total.icmp_errors}")
        if name == "dead":
            allowed = 0.2 * total.requests + 10 * total.seconds
            print(f"dead server: retransmissions allowed (20% of requests + 10/s of run time): {allowed:.0f}")
    if not args.only or "deadport" in args.only:
        code, took = dead_port_cli(args.rows)
        cells = f"| dead port (CLI bulk, no proxy) | 1 | {args.rows:,} | exit {code} |"
        lines.append(cells + f" | | | | | | | {took:.2f} s |")
        print(lines[-1], flush=True)
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--seeds", type=int, default=10, help="seeds for the 30%% loss scenario")
    p.add_argument("--only", nargs="*", help=f"scenarios: {' '.join(SCENARIOS)} deadport")
    args = p.parse_args()
    lines = asyncio.run(main_async(args))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
