"""The fault proxy cannot be turned into a loop or an unbounded amplifier (proxies started from the CLI)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from conftest import ROOT, spawn, start_server

from fault_proxy import MAX_COPIES, Direction, FaultPlan, FaultProxy, decide

WINDOW_S = 3.0


def start_proxy(*args: str) -> tuple[subprocess.Popen[str], tuple[str, int]]:
    proc, line = spawn(["fault_proxy.py", *args, "--seed", "1"], "fault_proxy:")
    host, _, port = line.split()[1].rpartition(":")
    return proc, (host, int(port))


def stop_proxy(proc: subprocess.Popen[str]) -> dict[str, int]:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    last = [line for line in out.splitlines() if "stopped;" in line][-1]
    return {k: int(v) for k, v in (kv.split("=", 1) for kv in last.split("stopped; ", 1)[1].split() if "=" in kv)}


class Echo:
    """A UDP echo server (the classic reflector) on loopback, bounded in count and time."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.address = self.sock.getsockname()
        self.received = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 30
        while not self._stop and self.received < 200_000 and time.monotonic() < deadline:
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            self.received += 1
            self.sock.sendto(data, addr)

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.sock.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_a_datagram_from_the_upstream_is_not_relayed_back_to_it() -> None:
    # Relayed, it would go echo -> proxy -> echo -> proxy ... forever.
    echo = Echo()
    proc, address = start_proxy("--listen", "127.0.0.1:0", "--upstream", f"{echo.address[0]}:{echo.address[1]}")
    try:
        echo.sock.sendto(b"ping", address)
        time.sleep(WINDOW_S)  # the observation window
        received = echo.received
    finally:
        stats = stop_proxy(proc)
        echo.close()
    assert received == 0 and stats.get("up.drop:from_upstream") == 1 and "up.received" not in stats, stats


def test_a_proxy_pointed_at_itself_does_not_loop() -> None:
    port = free_port()
    proc, address = start_proxy("--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{port}")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.sendto(b"x" * 76, address)
        time.sleep(WINDOW_S)
    finally:
        stats = stop_proxy(proc)
    assert stats.get("up.received") == 1 and stats.get("up.drop:from_self") == 1, stats


def test_a_proxy_spoofed_to_itself_does_not_loop() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but not root")
        pytest.skip("needs root (raw socket to spoof a source address on loopback)")
    sys.path.insert(0, str(ROOT / "fuzz"))
    from spoof import raw_socket, send_spoofed

    echo = Echo()
    proc, address = start_proxy("--listen", "127.0.0.1:0", "--upstream", f"{echo.address[0]}:{echo.address[1]}")
    try:
        raw = raw_socket()
        send_spoofed(raw, address, address, b"x" * 76)
        raw.close()
        time.sleep(WINDOW_S)
        received = echo.received
    finally:
        stats = stop_proxy(proc)
        echo.close()
    assert received == 0 and stats.get("up.drop:from_self") == 1, stats


def test_duplication_is_bounded_to_two_copies_never_larger() -> None:
    server, server_addr = start_server()
    proc, address = start_proxy(
        "--listen", "127.0.0.1:0", "--upstream", f"{server_addr[0]}:{server_addr[1]}", "--duplicate", "1"
    )
    from wire_format import QuoteRequest, encode_request

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            for rid in range(50):
                client.sendto(encode_request(QuoteRequest(rid, "apple", 1)), address)
            replies = [client.recv(2048) for _ in range(200)]  # 50 x 2 up x (1 reply + 1 cached) x 2 down
    finally:
        stats = stop_proxy(proc)
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=10)
    assert len(replies) == 200 and all(len(r) == 76 for r in replies)
    for d in ("up", "down"):
        assert stats[f"{d}.sent"] == MAX_COPIES * stats[f"{d}.received"], stats


def test_no_decision_sends_more_than_two_copies_or_a_larger_datagram() -> None:
    rng = random.Random(5)
    plan = FaultPlan.both(seed=3, duplicate=0.5, corrupt=0.5, truncate=0.5, reorder=0.3, jitter_s=0.01)
    for index in range(5000):
        data = rng.randbytes(rng.randrange(0, 1300))
        decision, _ = decide(plan, Direction.UP, 0, index, data, 0.0, False)
        assert decision.copies <= MAX_COPIES and len(decision.payload) <= len(data)


def test_flows_are_bounded() -> None:
    async def main() -> tuple[int, int]:
        async with FaultProxy(FaultPlan(), upstream=("127.0.0.1", free_port()), max_flows=8) as proxy:
            clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(20)]
            for c in clients:
                c.sendto(b"x", proxy.address)
            for _ in range(200):
                if proxy.stats["up.received"] == 20:
                    break
                await asyncio.sleep(0.01)
            for c in clients:
                c.close()
            return len(proxy._flows), proxy.stats["flows_evicted"]

    flows, evicted = asyncio.run(main())
    assert (flows, evicted) == (8, 12)
