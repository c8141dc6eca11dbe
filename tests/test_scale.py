"""Scaling: --workers with SO_REUSEPORT, and nginx's stream module balancing UDP over servers."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from helpers import ROOT, expected_prices, free_port, spawn, wait_until
from rootenv import require

from udp_price.client.api import NoAnswer, QuoteClient, QuoteResult

PY = sys.executable
PRICES = expected_prices()


def start(*args: str) -> tuple[subprocess.Popen[str], str]:
    return spawn(["udp_server.py", *args], "listening on")


async def many_clients(addr: tuple[str, int], clients: int, each: int) -> list[QuoteResult | NoAnswer]:
    """Quotes from many sockets (many source ports), so the kernel's flow hash spreads them."""
    items = sorted(PRICES)

    async def one_client(c: int) -> list[QuoteResult | NoAnswer]:
        out: list[QuoteResult | NoAnswer] = []
        async with QuoteClient(addr) as client:
            for i in range(each):
                try:
                    out.append(await client.quote(items[(c + i) % len(items)], i + 1))
                except NoAnswer as e:
                    out.append(e)
        return out

    return [r for rs in await asyncio.gather(*(one_client(c) for c in range(clients))) for r in rs]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def exact(results: list[QuoteResult | NoAnswer]) -> int:
    return sum(isinstance(r, QuoteResult) and r.total == PRICES[r.item] * r.quantity for r in results)


def test_two_workers_both_serve_and_stop_together() -> None:
    proc, line = start("--port", "0", "--workers", "2")
    port = int(line.split("127.0.0.1:")[1].split()[0])
    pids = [int(p) for p in line.split("pids ")[1].rstrip(")\n").split()]
    try:
        results = asyncio.run(many_clients(("127.0.0.1", port), clients=40, each=5))
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert exact(results) == 200
    assert proc.returncode == 0, err
    per_worker = [int(n) for n in out.split("workers_requests=")[1].split()[0].split(",")]
    assert len(per_worker) == 2 and all(n > 0 for n in per_worker), f"both workers answer: {per_worker}"
    assert sum(per_worker) >= 200 and "status.OK=" in out
    wait_until(lambda: not any(alive(pid) for pid in pids), "both workers to exit")


NGINX_CONF = ROOT / "deploy" / "nginx" / "udp-price.conf"


@contextmanager
def nginx_in_front(backends: list[int], listen: int, tmp: Path) -> Iterator[None]:
    """Run Debian's nginx with our shipped stream config, pointed at these loopback backends."""
    conf = NGINX_CONF.read_text().replace("listen 127.0.0.1:9000 udp", f"listen 127.0.0.1:{listen} udp")
    shipped = re.findall(r"server 127\.0\.0\.1:(\d+) ", conf)
    assert len(shipped) == len(backends), "the shipped config lists two backends"
    for old, new in zip(shipped, backends, strict=True):
        conf = conf.replace(f"server 127.0.0.1:{old} ", f"server 127.0.0.1:{new} ")
    modules = "\n".join(f"load_module {m};" for m in sorted(Path("/usr/lib/nginx/modules").glob("*stream*.so")))
    full = tmp / "nginx.conf"
    full.write_text(
        f"{modules}\npid {tmp}/nginx.pid;\nerror_log {tmp}/error.log info;\n"
        f"worker_processes 1;\nevents {{ worker_connections 1024; }}\n{conf}"
    )
    proc = subprocess.Popen(
        ["nginx", "-c", str(full), "-p", str(tmp), "-g", "daemon off;"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # nginx writes its pid file once its listening sockets are bound: wait for that, not a fixed time.
    wait_until(lambda: (tmp / "nginx.pid").exists() or proc.poll() is not None, "nginx to start")
    try:
        assert proc.poll() is None, proc.communicate()[1]
        yield
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_nginx_balances_udp_over_two_servers(tmp_path: Path) -> None:
    require("nginx")
    a, line_a = start("--port", "0")
    b, line_b = start("--port", "0")
    ports = [int(line.split("127.0.0.1:")[1].split()[0]) for line in (line_a, line_b)]
    listen = free_port()
    procs = {ports[0]: a, ports[1]: b}
    try:
        with nginx_in_front(ports, listen, tmp_path):
            first = asyncio.run(many_clients(("127.0.0.1", listen), clients=30, each=4))
            assert exact(first) == 120, "through nginx, every quote exact"
            procs[ports[1]].terminate()  # kill one backend
            procs[ports[1]].communicate(timeout=10)
            second = asyncio.run(many_clients(("127.0.0.1", listen), clients=30, each=4))
    finally:
        outs = {}
        for port, proc in procs.items():
            if proc.poll() is None:
                proc.terminate()
            outs[port] = proc.communicate(timeout=10)[0]
    served = [int(outs[p].split("requests=")[1].split()[0]) if "requests=" in outs[p] else 0 for p in ports]
    assert all(n > 0 for n in served), f"both backends served: {served}"
    wrong = [r for r in second if isinstance(r, QuoteResult) and r.total != PRICES[r.item] * r.quantity]
    assert not wrong, "a dead backend costs retries, never wrong answers"
    assert exact(second) == len(second), "the survivor takes over every quote (nginx marks the dead one failed)"


def test_nginx_config_is_valid() -> None:
    require("nginx")
    modules = "\n".join(f"load_module {m};" for m in sorted(Path("/usr/lib/nginx/modules").glob("*stream*.so")))
    with __import__("tempfile").TemporaryDirectory() as tmp:
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(
            f"{modules}\npid {tmp}/nginx.pid;\nerror_log {tmp}/error.log;\nevents {{}}\n{NGINX_CONF.read_text()}"
        )
        r = subprocess.run(["nginx", "-t", "-c", str(conf), "-p", tmp], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert shutil.which("nginx")
