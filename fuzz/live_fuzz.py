"""Fire random and mutated datagrams at a live udp-price server on loopback, then check it.

    python fuzz/live_fuzz.py --count 200000 --max-seconds 300 --seed 1

Starts its own server (rate limiting off, so every datagram reaches the decoder), sends
``--count`` datagrams in bursts (bounded by ``--max-seconds`` too), matches every reply to the
datagrams that carried its request id, and then checks:

- no reply was larger than the datagram that caused it (the amplification ratio),
- the server still answers every catalog item with the exact price,
- it stops cleanly on SIGTERM and logged no unhandled exception.

Prints one JSON report; exits 1 if a check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import random
import socket
import struct
import subprocess
import sys
import time
import zlib
from decimal import Decimal
from pathlib import Path
from typing import Any

from udp_price.client.api import QuoteClient
from udp_price.wire import BatchRequest, QuoteRequest, encode_batch_request, encode_request

ROOT = Path(__file__).resolve().parent.parent

BURST = 64


def catalog_prices() -> dict[str, int]:
    with (ROOT / "catalog.csv").open(encoding="utf-8", newline="") as f:
        return {r["item"]: int(Decimal(r["price"]) * 100) for r in csv.DictReader(f)}


def reseal(body: bytes) -> bytes:
    return body + struct.pack(">I", zlib.crc32(body))


def valid_message(rng: random.Random, items: list[str]) -> bytes:
    if rng.random() < 0.5:
        return encode_request(QuoteRequest(rng.getrandbits(64), rng.choice(items), rng.randint(0, 2**32 - 1)))
    lines = tuple((rng.choice(items), rng.randint(0, 2**32 - 1)) for _ in range(rng.randint(1, 32)))
    return encode_batch_request(BatchRequest(rng.getrandbits(64), lines))


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One of the ways real garbage differs from a valid message; half are resealed so the
    checks after the CRC (kind, count, UTF-8, NUL, reserved bytes) are reached too."""
    body = bytearray(data[:-4])
    kind = rng.randrange(9)
    if kind == 0:  # bit flips
        for _ in range(rng.randint(1, 8)):
            bit = rng.randrange(len(body) * 8)
            body[bit // 8] ^= 1 << (bit % 8)
    elif kind == 1:  # truncation
        body = body[: rng.randrange(len(body))]
    elif kind == 2:  # extension
        body += rng.randbytes(rng.randint(1, 200))
    elif kind == 3 and len(body) > 20:  # NUL inside the first name
        body[17] = 0
    elif kind == 4 and len(body) > 20:  # invalid UTF-8
        body[16:18] = b"\xc3\x28"
    elif kind == 5:  # unknown or wrong kind / version
        body[rng.choice((2, 3))] = rng.randrange(256)
    elif kind == 6 and len(body) > 12:  # batch count disagreeing with the length
        body[12] = rng.randrange(256)
    elif kind == 7 and len(body) > 16:  # extreme quantities
        body[12:16] = rng.choice((b"\0\0\0\0", b"\xff\xff\xff\xff", b"\x3b\x9a\xca\x01"))
    else:  # reserved bytes set
        body[-1] ^= 0x01
    return reseal(bytes(body)) if rng.random() < 0.5 else bytes(body) + data[-4:]


def next_datagram(rng: random.Random, items: list[str]) -> bytes:
    roll = rng.random()
    if roll < 0.25:
        return rng.randbytes(rng.randint(0, 1500))
    if roll < 0.30:
        return b"QP" + rng.randbytes(rng.randint(0, 200))
    return mutate(valid_message(rng, items), rng)


def fire(addr: tuple[str, int], count: int, max_seconds: float, seed: int, items: list[str]) -> dict[str, Any]:
    rng = random.Random(seed)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.connect(addr)
    sock.settimeout(0.02)
    sizes: dict[bytes, int] = {}  # request id bytes -> smallest datagram that carried it
    sent = replies = unmatched = 0
    max_ratio = 0.0
    deadline = time.monotonic() + max_seconds
    while sent < count and time.monotonic() < deadline:
        for _ in range(min(BURST, count - sent)):
            data = next_datagram(rng, items)
            if len(data) >= 12:
                key = data[4:12]
                sizes[key] = min(sizes.get(key, len(data)), len(data))
            sock.send(data)
            sent += 1
        while True:
            try:
                reply = sock.recv(65535)
            except (TimeoutError, ConnectionRefusedError):
                break
            replies += 1
            size = sizes.get(reply[4:12])
            if size is None:
                unmatched += 1
            else:
                max_ratio = max(max_ratio, len(reply) / size)
        if len(sizes) > 100_000:
            sizes.clear()  # bounded memory; late replies to cleared ids count as unmatched
    sock.close()
    return {"sent": sent, "replies": replies, "unmatched_replies": unmatched, "max_reply_to_request_ratio": max_ratio}


async def still_correct(addr: tuple[str, int], prices: dict[str, int]) -> int:
    async with QuoteClient(addr) as client:
        results = await asyncio.gather(*(client.quote(item, 3) for item in prices))
    return sum(r.total != 3 * prices[r.item] for r in results)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=200_000)
    p.add_argument("--max-seconds", type=float, default=300.0)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    prices = catalog_prices()
    server = subprocess.Popen(
        [sys.executable, "udp_server.py", "--port", "0", "--rate", "0"],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert server.stdout is not None
    start_line = server.stdout.readline()
    port = int(start_line.split("127.0.0.1:")[1].split()[0])
    started = time.monotonic()
    try:
        report = fire(("127.0.0.1", port), args.count, args.max_seconds, args.seed, sorted(prices))
        report["seconds"] = round(time.monotonic() - started, 1)
        report["wrong_quotes_after"] = asyncio.run(still_correct(("127.0.0.1", port), prices))
    finally:
        server.terminate()
        out, err = server.communicate(timeout=30)
    counters = dict(kv.split("=") for kv in out.split("stopped; ")[-1].split()) if "stopped; " in out else {}
    report["server_exit"] = server.returncode
    report["server_tracebacks"] = err.count("Traceback")
    report["server_counters"] = {k: int(v) for k, v in counters.items()}
    ok = (
        report["max_reply_to_request_ratio"] <= 1.0
        and report["wrong_quotes_after"] == 0
        and report["server_exit"] == 0
        and report["server_tracebacks"] == 0
        and report["unmatched_replies"] == 0
        and report["server_counters"].get("requests", 0) >= report["sent"] * 0.99
    )
    report["ok"] = ok
    print(json.dumps(report))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
