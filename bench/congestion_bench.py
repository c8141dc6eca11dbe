"""Congestion control, measured: N bulk clients (separate processes) sharing one bottleneck.

Per run: a fresh server, optionally the fault proxy, and N ``udp_client.py bulk`` processes, each
with its own file; ``--cc auto`` and ``--cc none`` in interleaved rounds (``--rounds``); each row
is the median run, the line under it every run. Every OK row's total is checked against
catalog.csv (a wrong one is a failed row). Scenarios (docs/congestion.md):

- ``bottleneck``: the proxy forwards client -> server at ``--rate`` requests/s with a tail-drop
  queue of ``--limit`` datagrams; goodput against that rate, queueing from the proxy's log.
- ``latecomers``: the same, the clients started 0.5 s apart (each joins a standing queue).
- ``server``: straight at a server with a fixed service time per request (``--service-us``,
  bench/slow_server.py), more offered load than it serves; against its capacity, measured by
  the same N clients with ``--cc none --window 256`` in the same rounds.
- ``loss30``: 30% random loss each way, no bottleneck, 3x the rows; against ``--cc none``.

    python bench/congestion_bench.py                      # every scenario, N = 1 2 4 8 (16 min)
    python bench/congestion_bench.py --clients 2 --only bottleneck --rows 2000 --rounds 1

Bounded: every client process has a time limit, every file a row count.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
REQUEST_BYTES = 76
"""A single quote request (--batch 1): what the bottleneck's rate is counted in."""
CLIENT_LIMIT_S = 120.0
SERVICE_US = 300.0
"""Default service time per request of the server in the ``server`` scenario (bench/slow_server.py):
about 2,500 single quotes per second, where one bulk client alone offers 5,000-6,000, so the
server and not the host is the bottleneck at every N (docs/congestion.md)."""

with (ROOT / "catalog.csv").open(encoding="utf-8", newline="") as _f:
    PRICES = {r["item"]: int(Decimal(r["price"]) * 100) for r in csv.DictReader(_f)}


@dataclass(frozen=True)
class Scenario:
    kind: str
    """One of KINDS, or "custom" (the proxy flags given)."""
    clients: int
    rows: int
    """Rows per client."""
    cc: str
    window: int = 64
    rate: int = 1000
    """Bottleneck requests per second (kind bottleneck)."""
    limit: int = 200
    """Bottleneck queue, datagrams (kind bottleneck)."""
    seed: int = 7
    batch: int = 1
    client_flags: tuple[str, ...] = ()
    proxy: tuple[str, ...] | None = None
    """Proxy flags of a scenario of one's own (kind "custom")."""
    stagger_s: float = 0.0
    """Seconds between the clients' starts (kind latecomers: each joins a queue the others keep)."""
    service_us: float = 0.0
    """The server's fixed service time per request (bench/slow_server.py; 0: the plain server)."""

    def proxy_flags(self) -> list[str] | None:
        if self.proxy is not None:
            return list(self.proxy)
        if self.kind in ("bottleneck", "latecomers"):
            return [f"--rate-up={self.rate * REQUEST_BYTES}bps", f"--limit-up={self.limit}"]
        if self.kind == "loss30":
            return ["--drop", "30%", "--seed", str(self.seed)]
        return None


@dataclass
class ClientRun:
    rows: int = 0
    ok: int = 0
    wrong: int = 0
    requests: int = 0
    retransmissions: int = 0
    elapsed_s: float = 0.0
    ended_at: float = 0.0
    p99_ms: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    reductions: dict[str, int] = field(default_factory=dict)
    """The congestion window's reductions by cause (mark, busy, delay) and marks seen (seen)."""
    stderr: str = ""

    @property
    def started_at(self) -> float:
        return self.ended_at - self.elapsed_s

    @property
    def goodput(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass
class Result:
    scenario: Scenario
    clients: list[ClientRun]
    queue_ms: list[float] = field(default_factory=list)
    tail_drops: int = 0

    @property
    def all_ok(self) -> bool:
        return all(c.ok == c.rows == self.scenario.rows and c.wrong == 0 for c in self.clients)

    @property
    def goodput(self) -> float:
        """Distinct requests answered per second, all clients, first start to last end."""
        span = max(c.ended_at for c in self.clients) - min(c.started_at for c in self.clients)
        return sum(c.requests for c in self.clients) / span if span > 0 else 0.0

    @property
    def fairness(self) -> float:
        """Jain's index over the clients' own goodputs: 1 = equal shares, 1/N = one takes all."""
        x = [c.goodput for c in self.clients]
        return sum(x) ** 2 / (len(x) * sum(v * v for v in x)) if any(x) else 0.0

    def reductions(self) -> str:
        """The window's reductions by cause, all clients: "mark/busy/delay, marks seen"."""
        total = {k: sum(c.reductions.get(k, 0) for c in self.clients) for k in ("mark", "busy", "delay", "seen")}
        return f"{total['mark']}/{total['busy']}/{total['delay']} (marks seen {total['seen']})"

    @property
    def retransmit_ratio(self) -> float:
        requests = sum(c.requests for c in self.clients)
        return sum(c.retransmissions for c in self.clients) / requests if requests else 0.0

    def queue_p99_ms(self) -> float:
        return percentile(self.queue_ms, 0.99)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def write_orders(path: Path, rows: int, seed: int) -> None:
    rng, items = random.Random(seed), sorted(PRICES)
    lines = ["item,quantity"] + [f"{rng.choice(items)},{rng.randint(1, 500)}" for _ in range(rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def check_output(path: Path, run: ClientRun) -> None:
    with path.open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            run.rows += 1
            run.statuses[row["status"]] = run.statuses.get(row["status"], 0) + 1
            if row["status"] != "OK":
                continue
            expected = PRICES[row["item"]] * int(row["quantity"])
            if int(Decimal(row["total"]) * 100) == expected:
                run.ok += 1
            else:
                run.wrong += 1


def parse_summary(stderr: str, run: ClientRun) -> None:
    m = re.search(r"requests=(\d+) retransmissions=(\d+)", stderr)
    t = re.search(r"p99=([\d.]+) ms; .* in ([\d.]+) s", stderr)
    if m is None or t is None:
        raise RuntimeError(f"no bulk summary in the client's stderr: {stderr[-500:]!r}")
    run.requests, run.retransmissions = int(m[1]), int(m[2])
    run.p99_ms, run.elapsed_s = float(t[1]), float(t[2])
    c = re.search(r"reductions: overload mark=(\d+) busy=(\d+) delay=(\d+) \(overload marks seen=(\d+)\)", stderr)
    if c is not None:
        run.reductions = dict(zip(("mark", "busy", "delay", "seen"), map(int, c.groups()), strict=True))


def start(args: list[str], marker: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([PY, *args], cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if marker not in line:
        proc.kill()
        raise RuntimeError(f"{args[0]} did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
    return proc, line


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


def run_clients(s: Scenario, target: str, work: Path) -> list[ClientRun]:
    runs = [ClientRun() for _ in range(s.clients)]
    procs = []
    for i in range(s.clients):
        write_orders(work / f"orders{i}.csv", s.rows, s.seed * 100 + i)
    for i in range(s.clients):
        if i and s.stagger_s:
            time.sleep(s.stagger_s)
        cmd = [PY, "udp_client.py", "bulk", str(work / f"orders{i}.csv"), "-o", str(work / f"out{i}.csv")]
        cmd += ["--server", target, "--batch", str(s.batch), "--window", str(s.window), "--cc", s.cc, "--no-progress"]
        cmd += s.client_flags
        procs.append(subprocess.Popen(cmd, cwd=ROOT, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))

    def wait(i: int) -> None:
        try:
            _, runs[i].stderr = procs[i].communicate(timeout=CLIENT_LIMIT_S)
        except subprocess.TimeoutExpired:
            procs[i].kill()
            _, runs[i].stderr = procs[i].communicate()
        runs[i].ended_at = time.monotonic()

    threads = [threading.Thread(target=wait, args=(i,)) for i in range(s.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, run in enumerate(runs):
        parse_summary(run.stderr, run)
        check_output(work / f"out{i}.csv", run)
    return runs


def run_scenario(s: Scenario) -> Result:
    """One scenario on a fresh server (and proxy): every process is stopped before it returns."""
    with tempfile.TemporaryDirectory(prefix="ccbench") as tmp:
        work = Path(tmp)
        server_cmd = ["udp_server.py", "--listen", "127.0.0.1:0", "--catalog", "catalog.csv"]
        if s.service_us:
            server_cmd[:1] = ["bench/slow_server.py", f"--service-us={s.service_us}"]
        server, line = start(server_cmd, "listening on")
        proxy = None
        try:
            target = line.split("listening on ")[1].split()[0]
            flags = s.proxy_flags()
            if flags is not None:
                log = work / "decisions.jsonl"
                cmd = ["fault_proxy.py", "--listen", "127.0.0.1:0", "--upstream", target, *flags, "--log", str(log)]
                proxy, pline = start(cmd, "fault_proxy:")
                target = pline.split()[1]
            result = Result(s, run_clients(s, target, work))
        finally:
            if proxy is not None:
                stop(proxy)
            stop(server)
        if flags is not None and s.kind in ("bottleneck", "latecomers"):
            read_queue(work / "decisions.jsonl", result)
        return result


def read_queue(log: Path, result: Result) -> None:
    """Queueing delay of every request the bottleneck forwarded, and its tail drops."""
    with log.open(encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if record["dir"] != "up":
                continue
            if record["action"] == "deliver":
                result.queue_ms.append(float(record["delay_ms"]))
            elif record["action"] == "drop:limit":
                result.tail_drops += 1


def row(result: Result, reference: float) -> str:
    s = result.scenario
    failed = sum(c.rows - c.ok for c in result.clients) + sum(s.rows - c.rows for c in result.clients)
    queue = f"{result.queue_p99_ms():7.1f}" if s.kind in ("bottleneck", "latecomers") else "      -"
    return (
        f"| {s.kind:10} | {s.clients} | {s.cc:4} | {result.goodput:8,.0f} | {result.goodput / reference:5.2f} "
        f"| {result.fairness:5.3f} | {100 * result.retransmit_ratio:6.1f}% | {queue} | {result.tail_drops:6} "
        f"| {failed:6} |"
    )


HEADER = (
    "| scenario   | N | cc   | goodput req/s | x reference | Jain | retrans | queue p99 ms | tail drops "
    "| failed rows |\n|---|---|---|---|---|---|---|---|---|---|"
)
LATECOMER_STAGGER_S = 0.5
"""Seconds between the clients' starts in the latecomers scenario."""
SERVER_WINDOW = 64
"""--window (the controller's maximum) of both modes straight at the server: the default."""
CAPACITY_WINDOW = 256
"""--window of the --cc none runs that saturate the server to measure its capacity."""
KINDS = ("bottleneck", "latecomers", "server", "loss30")
CCS = ("auto", "none")


def median_run(results: list[Result]) -> Result:
    return sorted(results, key=lambda r: r.goodput)[len(results) // 2]


def rounds_of(scenarios: dict[str, Scenario], rounds: int) -> dict[str, list[Result]]:
    """Every scenario once per round, in order, round after round (interleaved, so a slow spell
    of the shared host touches every mode alike)."""
    runs: dict[str, list[Result]] = {name: [] for name in scenarios}
    for _ in range(rounds):
        for name, scenario in scenarios.items():
            runs[name].append(run_scenario(scenario))
    return runs


def print_rows(n: int, runs: dict[str, list[Result]], reference: float, what: str) -> None:
    """The median run of auto and of none, then a line with every run and auto's reductions."""
    for cc in CCS:
        print(row(median_run(runs[cc]), reference), flush=True)
    every = " ".join(f"{k}=" + "/".join(run_figures(r) for r in v) for k, v in runs.items())
    auto = median_run(runs["auto"]).reductions()
    line = f"{what}; every run: {every}; auto's reductions mark/busy/delay: {auto}"
    print(f"|            | {n} | {line} |||||||", flush=True)


def run_figures(r: Result) -> str:
    """A run in a few characters: goodput, and through a bottleneck Jain's index, queue p99, tail drops."""
    if r.scenario.kind in ("bottleneck", "latecomers"):
        return f"{r.goodput:,.0f} (J {r.fairness:.3f}, p99 {r.queue_p99_ms():.0f} ms, {r.tail_drops} drops)"
    return f"{r.goodput:,.0f}"


def server_rows(n: int, rows: int, rounds: int, service_us: float) -> None:
    """Straight at the server: rounds of (capacity, auto, none), interleaved; medians."""
    capacity_run = Scenario("server", n, rows, "none", window=CAPACITY_WINDOW, service_us=service_us)
    modes = {cc: Scenario("server", n, rows, cc, window=SERVER_WINDOW, service_us=service_us) for cc in CCS}
    runs = rounds_of({"capacity": capacity_run, **modes}, rounds)
    capacity = median_run(runs["capacity"]).goodput
    what = f"capacity {capacity:,.0f}/s (median; {n} x --cc none --window {CAPACITY_WINDOW})"
    print_rows(n, runs, capacity, what)


def path_rows(kind: str, n: int, rows: int, rounds: int, rate: int, limit: int) -> None:
    """Through the bottleneck (bottleneck, latecomers) or 30% random loss (loss30): rounds of
    (auto, none), interleaved; medians."""
    stagger = LATECOMER_STAGGER_S if kind == "latecomers" else 0.0
    runs = rounds_of({cc: Scenario(kind, n, rows, cc, rate=rate, limit=limit, stagger_s=stagger) for cc in CCS}, rounds)
    if kind == "loss30":
        reference, what = median_run(runs["none"]).goodput, "reference: the median --cc none run"
    else:
        reference, what = float(rate), f"reference: the bottleneck's {rate:,}/s"
    print_rows(n, runs, reference, what)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--only", nargs="+", choices=KINDS, default=list(KINDS))
    p.add_argument("--rows", type=int, default=8000, help="rows per scenario, shared among the clients")
    p.add_argument("--rate", type=int, default=1000, help="bottleneck requests per second")
    p.add_argument("--limit", type=int, default=200, help="bottleneck queue in datagrams")
    p.add_argument("--rounds", type=int, default=3, help="rounds of every scenario (medians)")
    p.add_argument(
        "--service-us",
        type=float,
        default=SERVICE_US,
        metavar="US",
        help=f"server scenario: the server's service time per request, microseconds (default {SERVICE_US:g}; 0: none)",
    )
    args = p.parse_args(argv)
    if not 0 <= args.service_us <= 100_000:
        p.error("--service-us must be between 0 and 100000")
    # SIGTERM ends the run like Ctrl-C does: through the finally blocks that stop every process.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(
        f"bottleneck: {args.rate} requests/s, tail drop at {args.limit} datagrams "
        f"({1000 * args.limit / args.rate:.0f} ms of queue); batch 1, --window 64"
    )
    if "server" in args.only:
        print(
            f"server: {args.service_us:g} us of service time per request (bench/slow_server.py); "
            f"--window {SERVER_WINDOW}; "
            f"capacity = N x --cc none --window {CAPACITY_WINDOW}"
        )
    print(HEADER)
    for kind in args.only:
        for n in [1] if kind == "loss30" else [c for c in args.clients if c > 1 or kind != "latecomers"]:
            if kind == "server":
                server_rows(n, max(100, 3 * args.rows // n), args.rounds, args.service_us)
            else:
                # At 30% loss the last requests' RTOs, not the rate, set a short run's time.
                rows = 3 * args.rows if kind == "loss30" else args.rows
                path_rows(kind, n, max(100, rows // n), args.rounds, args.rate, args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
