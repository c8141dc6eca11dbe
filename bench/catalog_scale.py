"""Catalogs of 10k, 100k and 1M items: start-up, RSS, reload, answer gap, full listing, prefix search.

For each size: writes a catalog (names in shuffled order, so the server sorts), starts the server
from the CLI and measures the time until it listens, its RSS, then reloads (SIGHUP) a copy with
one price changed while a client quotes in a loop (one request in flight, bounded in count and
time) and reports the reload time (SIGHUP until the new price is answered) and the longest gap
between two answers, then times `udp_client.py items` over the whole catalog and a prefix search
(`list_once` with a prefix and a limit of 20, median of 20).

    .venv/bin/python bench/catalog_scale.py            # all three sizes, about a minute
    .venv/bin/python bench/catalog_scale.py 10000      # one size
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from udp_price.client.api import list_once
from udp_price.wire import QuoteRequest, decode_reply, encode_request

ROOT = Path(__file__).resolve().parent.parent
SIZES = (10_000, 100_000, 1_000_000)
MAX_PROBES = 2_000_000
MAX_SECONDS = 60.0


def write_catalog(path: Path, n: int, probe_price: str) -> None:
    step = 7919 if n % 7919 else 7907  # a stride coprime with n: every name once, not in order
    with path.open("w", encoding="utf-8") as f:
        f.write(f"item,price\nprobe,{probe_price}\n")
        f.writelines(f"sku-{(k * step) % n:07d},{k % 1000}.{k % 100:02d}\n" for k in range(n - 1))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def quote_probe(s: socket.socket, addr: tuple[str, int], rid: int) -> int | None:
    s.sendto(encode_request(QuoteRequest(rid, "probe", 1)), addr)
    try:
        return decode_reply(s.recv(2048)).unit_price
    except TimeoutError:
        return None


def reload_gap(pid: int, addr: tuple[str, int]) -> tuple[float, float]:
    """(seconds from SIGHUP until the new price answers, longest gap between answers meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1.0)
        start = last = time.monotonic()
        gap, sent = 0.0, False
        for rid in range(MAX_PROBES):
            if not sent and time.monotonic() - start > 0.5:
                os.kill(pid, signal.SIGHUP)
                sent, hup_at, gap = True, time.monotonic(), 0.0
            price = quote_probe(s, addr, rid)
            now = time.monotonic()
            if now - start > MAX_SECONDS:
                raise SystemExit("no reload within the time bound")
            if price is None:
                continue
            gap, last = max(gap, now - last), now
            if sent and price == 200:
                return now - hup_at, gap
    raise SystemExit("probe bound reached")


def measure(n: int, tmp: Path) -> dict[str, float]:
    catalog = tmp / f"catalog-{n}.csv"
    write_catalog(catalog, n, "1.00")
    began = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "udp_server.py"), "--port", "0", "--catalog", str(catalog)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    startup = time.monotonic() - began
    port = int(line.split("listening on ")[1].split()[0].rsplit(":", 1)[1])
    addr = ("127.0.0.1", port)
    try:
        rss = rss_mb(proc.pid)
        write_catalog(catalog, n, "2.00")
        reload_s, gap = reload_gap(proc.pid, addr)
        began = time.monotonic()
        subprocess.run(
            [sys.executable, str(ROOT / "udp_client.py"), "--server", f"127.0.0.1:{port}", "items"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=True,
            timeout=120,
        )
        listing = time.monotonic() - began
        searches = []
        for k in range(20):
            began = time.monotonic()
            found = list_once(addr, prefix=f"sku-{(k * 4241) % n:07d}"[:9], limit=20)[1]
            searches.append(time.monotonic() - began)
            assert found, "a prefix of a catalog name finds it"
        rss_after = rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    return {
        "startup_s": startup,
        "rss_mb": rss,
        "rss_after_mb": rss_after,
        "reload_s": reload_s,
        "gap_ms": gap * 1000,
        "listing_s": listing,
        "search_ms": statistics.median(searches) * 1000,
    }


def main(argv: list[str]) -> int:
    sizes = tuple(int(a) for a in argv) or SIZES
    print(
        "| items | start-up | server RSS (after reload + listing) | reload | longest answer gap "
        "| `items` (all) | prefix search |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            r = measure(n, Path(tmp))
            print(
                f"| {n:,} | {r['startup_s']:.2f} s | {r['rss_mb']:.0f} MB ({r['rss_after_mb']:.0f} MB) "
                f"| {r['reload_s']:.2f} s | {r['gap_ms']:.0f} ms | {r['listing_s']:.1f} s | {r['search_ms']:.1f} ms |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
