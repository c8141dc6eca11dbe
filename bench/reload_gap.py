"""Longest gap between answers while a server started from the CLI reloads a 1,000,000-item catalog.

A client quotes in a loop (one request in flight, bounded in count and time) against ``--watch``;
after a baseline window a million-item catalog is renamed over the small one (the --watch path; bench/catalog_scale.py
measures the SIGHUP path at 10k, 100k and 1M items). Prints
the longest gap between two answers before the rename (baseline) and during the reload, and their
ratio.

    .venv/bin/python bench/reload_gap.py
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from udp_price.wire import QuoteRequest, decode_reply, encode_request

ROOT = Path(__file__).resolve().parent.parent
ITEMS = 1_000_000

MAX_PROBES = 2_000_000
MAX_SECONDS = 120.0


def write_big(path: Path) -> None:
    with path.open("w", encoding="utf-8") as f:
        f.write("item,price\napple,7.77\n")
        f.writelines(f"i{n:07d},{n % 1000}.{n % 100:02d}\n" for n in range(ITEMS - 1))
    past = time.time() - 10
    os.utime(path, (past, past))  # written well before the rename, as an operator would


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        catalog, big = Path(tmp) / "catalog.csv", Path(tmp) / "big.csv"
        catalog.write_text("item,price\napple,0.50\n", encoding="utf-8")
        write_big(big)
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "udp_server.py"), "--port", "0", "--catalog", str(catalog), "--watch"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdout is not None
        port = int(proc.stdout.readline().split("listening on ")[1].split()[0].rsplit(":", 1)[1])
        try:
            baseline, during, answered = probe(("127.0.0.1", port), big, catalog)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)
    print(
        f"reload of {ITEMS:,} items: longest gap between answers {during * 1000:.0f} ms "
        f"(baseline before the rename {baseline * 1000:.1f} ms, ratio {during / baseline:.0f}x); {answered} answers"
    )
    return 0


def probe(addr: tuple[str, int], big: Path, catalog: Path) -> tuple[float, float, int]:
    """(longest gap before the rename, longest gap until the new catalog answers, answers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1.0)
        start = last = time.monotonic()
        baseline = during = 0.0
        renamed = False
        for rid in range(MAX_PROBES):
            now = time.monotonic()
            if now - start > MAX_SECONDS:
                raise SystemExit("no new catalog within the time bound")
            if not renamed and now - start > 2.0:
                os.replace(big, catalog)
                renamed = True
            s.sendto(encode_request(QuoteRequest(rid, "apple", 1)), addr)
            try:
                reply = decode_reply(s.recv(2048))
            except TimeoutError:
                continue
            now = time.monotonic()
            gap, last = now - last, now
            if renamed:
                during = max(during, gap)
                if reply.unit_price == 777:
                    return baseline, during, rid
            else:
                baseline = max(baseline, gap)
    raise SystemExit("probe bound reached")


if __name__ == "__main__":
    sys.exit(main())
