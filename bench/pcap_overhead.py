"""What fault_proxy --pcap costs: relay throughput with and without a capture, in one run.

An in-process FaultProxy (no faults) in front of an echo upstream; a client keeps WINDOW datagrams
of SIZE bytes in flight and counts echoes. Rounds alternate with and without a capture (written to a
temporary file), so both see the same machine load; prints datagrams/s of each and the median ratio.
Bounded: ROUNDS x 2 x N echoes, each round at most ROUND_LIMIT_S seconds.

    .venv/bin/python bench/pcap_overhead.py
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import statistics
import tempfile
import time

from udp_price.faults.pcap import PcapWriter, ProxyCapture
from udp_price.faults.plan import FaultPlan
from udp_price.faults.relay import FaultProxy

N = 5_000
SIZE = 1172
"""A 32-line batch request: the largest datagram the client sends."""
WINDOW = 32
ROUNDS = 5
ROUND_LIMIT_S = 30.0


async def one_round(capture_path: str | None) -> float:
    """Echoes per second through the proxy, with a capture to ``capture_path`` or none."""
    loop = asyncio.get_running_loop()
    upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    upstream.bind(("127.0.0.1", 0))
    upstream.setblocking(False)
    loop.add_reader(upstream, lambda: upstream.sendto(*upstream.recvfrom(65536)))
    out = open(capture_path, "wb") if capture_path else None  # noqa: SIM115 - closed below
    capture = ProxyCapture(PcapWriter(out), 0.0) if out else None
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.setblocking(False)
    body = bytes(range(256)) * (SIZE // 256) + bytes(SIZE % 256 - 8)

    def payload() -> bytes:  # each one different: the proxy refuses its own datagram come back (loop guard)
        return sent.to_bytes(8, "big") + body

    got = sent = 0
    done = loop.create_future()
    try:
        async with FaultProxy(FaultPlan(), upstream.getsockname(), capture=capture) as proxy:

            def on_echo() -> None:
                nonlocal got, sent
                while True:
                    try:
                        client.recv(65536)
                    except BlockingIOError:
                        break
                    got += 1
                    if sent < N:
                        client.sendto(payload(), proxy.address)
                        sent += 1
                if got >= N and not done.done():
                    done.set_result(None)

            loop.add_reader(client, on_echo)
            start = time.perf_counter()
            for _ in range(WINDOW):
                client.sendto(payload(), proxy.address)
                sent += 1
            # A lost datagram stalls the window: the echoes so far still measure the rate.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done, ROUND_LIMIT_S)
            elapsed = time.perf_counter() - start
            loop.remove_reader(client)
    finally:
        loop.remove_reader(upstream)
        upstream.close()
        client.close()
        if out:
            out.close()
    return got / elapsed


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.pcapng")
        plain, captured = [], []
        for _ in range(ROUNDS):
            plain.append(await one_round(None))
            captured.append(await one_round(path))
    ratios = [c / p for c, p in zip(captured, plain, strict=True)]
    print(f"{SIZE}-byte datagrams, {N} echoes per round, {ROUNDS} rounds each way, window {WINDOW}")
    print(f"without --pcap: {statistics.median(plain):8.0f} datagrams/s (median)")
    print(f"with    --pcap: {statistics.median(captured):8.0f} datagrams/s (median)")
    print(f"throughput with / without --pcap: {statistics.median(ratios):.2f} (median of per-round ratios)")


if __name__ == "__main__":
    asyncio.run(main())
