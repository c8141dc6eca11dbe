"""The fault proxy cannot be turned into a loop or an unbounded amplifier (proxies started from the CLI)."""

from __future__ import annotations

import asyncio
import random
import signal
import socket
import subprocess
import threading
import time

import pytest
import rootenv
from helpers import free_port, spawn, start_server

from udp_price.faults import relay
from udp_price.faults.guards import FD_RESERVE, HeldBudget, LoopGuard, flow_limit, normalise
from udp_price.faults.plan import MAX_COPIES, Direction, FaultPlan, Faults, decide
from udp_price.faults.relay import FaultProxy

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


def need_root() -> None:
    rootenv.need_root("raw socket to spoof a source address on loopback")


def spoof_one(source: tuple[str, int], to: tuple[str, int], payload: bytes) -> None:
    from spoof import raw_socket, send_spoofed

    raw = raw_socket()
    send_spoofed(raw, source, to, payload)
    raw.close()


def test_a_proxy_spoofed_to_itself_does_not_loop() -> None:
    need_root()
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
    from udp_price.wire import QuoteRequest, encode_request

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
            for n, c in enumerate(clients):
                c.sendto(b"x%d" % n, proxy.address)  # distinct: the loop guard drops one payload from many
            for _ in range(200):
                if proxy.stats["up.received"] == 20:
                    break
                await asyncio.sleep(0.01)
            for c in clients:
                c.close()
            return len(proxy._flows), proxy.stats["flows_evicted"]

    flows, evicted = asyncio.run(main())
    assert (flows, evicted) == (8, 12)


# ---------------------------------------------------------------- loops found by a second review


@pytest.mark.parametrize("how", ["upstream by name", "dual-stack listen"])
def test_the_upstream_is_recognised_by_name_and_through_a_dual_stack_socket(how: str) -> None:
    # --upstream localhost:P must be compared as numbers (sources are numeric); a proxy listening on
    # [::] sees an IPv4 echo as ::ffff:127.0.0.1. Either way the echo's datagram must not be relayed.
    need_root()
    echo = Echo()
    port = free_port()
    upstream = f"localhost:{echo.address[1]}" if how == "upstream by name" else f"127.0.0.1:{echo.address[1]}"
    listen = f"127.0.0.1:{port}" if how == "upstream by name" else f"[::]:{port}"
    proc, _ = start_proxy("--listen", listen, "--upstream", upstream)
    try:
        spoof_one(echo.address, ("127.0.0.1", port), b"ping")
        time.sleep(WINDOW_S)  # the observation window: count what keeps coming
        received = echo.received
    finally:
        stats = stop_proxy(proc)
        echo.close()
    assert received == 0 and stats.get("up.drop:from_upstream") == 1, stats


def test_a_reflecting_service_on_any_port_cannot_loop_through_the_proxy() -> None:
    # One datagram "from" a second echo: the proxy relays it up, the upstream echo answers, the
    # proxy sends that down to the second echo, which sends it back as a new request...
    need_root()
    upstream, reflector = Echo(), Echo()
    proc, address = start_proxy("--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{upstream.address[1]}")
    try:
        spoof_one(reflector.address, address, b"ping")
        time.sleep(WINDOW_S)
        counts = (upstream.received, reflector.received)
    finally:
        stats = stop_proxy(proc)
        upstream.close()
        reflector.close()
    assert counts == (1, 1) and stats.get("up.drop:loop") == 1, (counts, stats)


def test_reflector_source_ports_are_not_relayed() -> None:
    need_root()
    echo = Echo()
    proc, address = start_proxy("--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{echo.address[1]}")
    try:
        for port in (7, 19, 53, 123, 11211):
            spoof_one(("127.0.0.1", port), address, b"ping%d" % port)
        time.sleep(WINDOW_S)
        received = echo.received
    finally:
        stats = stop_proxy(proc)
        echo.close()
    assert received == 0 and stats.get("up.drop:reflector_port") == 5, stats


@pytest.mark.parametrize("duplicate", [False, True])
def test_two_proxies_pointed_at_each_other_do_not_loop(duplicate: bool) -> None:
    a, b = free_port(), free_port()
    extra = ["--duplicate", "1.0"] if duplicate else []
    proc_a, _ = start_proxy("--listen", f"127.0.0.1:{a}", "--upstream", f"127.0.0.1:{b}", *extra)
    proc_b, _ = start_proxy("--listen", f"127.0.0.1:{b}", "--upstream", f"127.0.0.1:{a}", *extra)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.sendto(b"x" * 76, ("127.0.0.1", a))
        time.sleep(WINDOW_S)
    finally:
        stats_a, stats_b = stop_proxy(proc_a), stop_proxy(proc_b)
    copies = 2 if duplicate else 1
    # A relays the client's datagram (copies); B relays each once more (copies each); back at A every
    # one of them is the same payload from another address: dropped. Nothing more, ever.
    assert stats_a.get("up.received") == 1 and stats_a.get("up.sent") == copies, stats_a
    assert stats_b.get("up.received") == copies and stats_b.get("up.sent") == copies * copies, stats_b
    assert stats_a.get("up.drop:loop") == copies * copies, stats_a


def test_loop_guard_policy() -> None:
    guard = LoopGuard(window_s=2.0)
    alice, bob = ("127.0.0.1", 40000), ("127.0.0.1", 40001)
    assert not guard.is_loop(b"req", alice, 0.0)
    assert not guard.is_loop(b"req", alice, 0.5), "a client's own retransmission is relayed"
    assert guard.is_loop(b"req", bob, 1.0), "the same bytes from another address: come back to us"
    assert not guard.is_loop(b"req", bob, 3.0), "outside the window it is new"
    guard.sent_down(b"reply", 4.0)
    assert guard.is_loop(b"reply", alice, 4.1), "a reply sent down, coming back up: a reflector"
    small = LoopGuard(max_digests=3)
    for n in range(10):
        small.is_loop(b"%d" % n, alice, 0.0)
    assert len(small) == 3


def test_normalise_and_flow_limit() -> None:
    assert normalise(("::ffff:127.0.0.1", 5)) == ("127.0.0.1", 5)
    assert normalise(("::1", 5)) == ("::1", 5) and normalise(("10.0.0.1", 5)) == ("10.0.0.1", 5)
    assert flow_limit(1024, 1024) == 1024 - FD_RESERVE
    assert flow_limit(1024, 1 << 20) == 1024 and flow_limit(1024, -1) == 1024 and flow_limit(1024, 10) == 1


def run_proxy(proxy: FaultProxy, payloads: list[bytes], until: str, count: int) -> dict[str, int]:
    """Send ``payloads`` from one fresh socket each, wait until stats[until] == count (bounded)."""

    async def main() -> dict[str, int]:
        async with proxy:
            clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in payloads]
            for client, payload in zip(clients, payloads, strict=True):
                client.sendto(payload, proxy.address)
            for _ in range(500):
                if proxy.stats[until] >= count:
                    break
                await asyncio.sleep(0.01)
            for client in clients:
                client.close()
            return dict(proxy.stats)

    return asyncio.run(main())


def test_no_free_file_descriptor_drops_the_datagram_and_logs_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = relay._udp_socket
    opened = 0

    def limited(host: str) -> socket.socket:
        nonlocal opened
        opened += 1
        if opened > 3:  # the listening socket and two flows, then EMFILE
            raise OSError(24, "Too many open files")
        return real(host)

    monkeypatch.setattr(relay, "_udp_socket", limited)
    proxy = FaultProxy(FaultPlan(), upstream=("127.0.0.1", free_port()))
    stats = run_proxy(proxy, [b"x%d" % n for n in range(10)], "up.drop:no_fd", 8)
    err = capsys.readouterr().err
    assert stats.get("up.drop:no_fd") == 8 and stats.get("up.received") == 2, stats
    assert err.count("cannot open a socket for a new flow") == 1 and "Traceback" not in err


def test_idle_flows_are_closed() -> None:
    proxy = FaultProxy(FaultPlan(), upstream=("127.0.0.1", free_port()), flow_idle_s=0.0)
    stats = run_proxy(proxy, [b"x%d" % n for n in range(6)], "up.received", 6)
    assert stats.get("flows_expired") == 5 and "flows_evicted" not in stats, stats


def test_held_datagrams_are_bounded_in_count_and_bytes() -> None:
    plan = FaultPlan(up=Faults(delay_s=30.0))
    by_count = FaultProxy(plan, upstream=("127.0.0.1", free_port()), max_held=4)
    stats = run_proxy(by_count, [b"x%d" % n for n in range(10)], "up.drop:held_full", 6)
    assert (stats.get("up.deliver"), stats.get("up.drop:held_full")) == (10, 6), stats
    by_bytes = FaultProxy(plan, upstream=("127.0.0.1", free_port()), max_held_bytes=3000)
    stats = run_proxy(by_bytes, [bytes([n]) * 1000 for n in range(10)], "up.drop:held_full", 7)
    assert stats.get("up.drop:held_full") == 7, stats
    budget = HeldBudget(max_count=2, max_bytes=100)
    assert budget.take(60) and not budget.take(60) and budget.take(40) and not budget.take(0)
    budget.give_back(60)
    assert budget.take(10)
