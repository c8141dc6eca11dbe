"""The quick-start demo: real quotes surviving real loss, all on loopback.

Starts a udp-price server on the bundled catalog, puts the fault proxy in front
of it dropping 30% of datagrams each way, quotes a handful of items through it,
checks every total against the catalog and shows what the client survived.

    python demo.py [--loss 0.3] [--seed 7] [--catalog catalog.csv]
    python -m udp_price demo
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading

from udp_price.catalog import Catalog, format_money, load_catalog
from udp_price.cli.capture import close_capture, open_capture
from udp_price.cli.common import add_version, default_catalog, prog_name
from udp_price.client.api import NoAnswer, QuoteClient, QuoteResult
from udp_price.errors import CatalogError
from udp_price.faults.pcap import ProxyCapture
from udp_price.faults.plan import FaultPlan
from udp_price.faults.relay import FaultProxy
from udp_price.server.core import QuoteServer
from udp_price.server.loop import Control, bind_socket, serve

ORDERS = [
    ("apple", 3),
    ("café crème", 2),
    ("pain au chocolat", 6),
    ("smørbrød", 1),
    ("jalapeño", 25),
    ("basmati rice 5kg", 2),
    ("crème brûlée", 4),
    ("olive oil 1l", 3),
    ("espresso", 10),
    ("gift card", 2),
    ("thé vert", 7),
    ("watermelon", 1),
]


def show(result: QuoteResult | NoAnswer, item: str, qty: int) -> str:
    if isinstance(result, NoAnswer):
        return f"  {qty} x {item}: FAILED ({result})"
    line = f"{result.quantity} x {result.item} @ {format_money(result.unit_price)} = {format_money(result.total)}"
    lost = f" ({result.attempts - 1} lost on the way)" if result.attempts > 1 else ""
    return f"  {line:<42} {result.attempts} attempt{'s' if result.attempts > 1 else ''}{lost}"


async def run(
    catalog: Catalog, server: tuple[str, int], loss: float, seed: int, capture: ProxyCapture | None = None
) -> int:
    plan = FaultPlan.both(seed=seed, drop=loss)
    async with FaultProxy(plan, upstream=server, capture=capture) as proxy, QuoteClient(proxy.address) as client:
        print(f"udp-price demo: server {server[0]}:{server[1]} ({len(catalog)} items from the catalog)")
        print(
            f"  client -> fault proxy {proxy.address[0]}:{proxy.address[1]} dropping {loss:.0%} of datagrams "
            f"each way (seed {seed}) -> server\n"
        )
        wrong = failed = 0
        for item, qty in ORDERS:
            try:
                result: QuoteResult | NoAnswer = await client.quote(item, qty)
            except NoAnswer as e:
                result = e
            print(show(result, item, qty))
            if isinstance(result, NoAnswer):
                failed += 1
            elif result.total != catalog.prices[item] * qty:
                wrong += 1
        dropped = sum(v for k, v in proxy.stats.items() if k.split(".", 1)[1].startswith("drop:"))
        seen = proxy.stats["up.received"] + proxy.stats["down.received"]
        print(
            f"\n{len(ORDERS)} quotes: {len(ORDERS) - wrong - failed} exact (checked against the catalog), "
            f"{wrong} wrong, {failed} failed; {client.stats['retransmissions']} retransmissions; "
            f"the proxy dropped {dropped} of {seen} datagrams."
        )
    return 0 if wrong == failed == 0 else 1


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=prog_name(prog, "demo.py"),
        description="Quote a few items through a lossy proxy and check every total.",
    )
    add_version(p)
    p.add_argument("--loss", type=float, default=0.3, help="drop probability each way (default 0.3)")
    p.add_argument("--seed", type=int, default=7, help="fault seed (default 7)")
    p.add_argument("--catalog", default=None, help="default ./catalog.csv, else the sample shipped with udp-price")
    p.add_argument("--pcap", metavar="FILE", help="capture the proxy's traffic to a pcapng file (see docs/testing.md)")
    args = p.parse_args(argv)
    if args.catalog is None:
        args.catalog = default_catalog()
    if not 0 <= args.loss < 1:
        p.error("--loss must be in [0, 1)")
    try:
        catalog = load_catalog(args.catalog)
    except CatalogError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 4
    capture = open_capture(args.pcap)
    if isinstance(capture, str):
        print(capture.replace("fault_proxy:", "demo:"), file=sys.stderr)
        return 2
    core, control, sock = QuoteServer(catalog), Control(), bind_socket("127.0.0.1", 0)
    thread = threading.Thread(target=serve, args=(sock, core, control), daemon=True)
    thread.start()
    try:
        code = asyncio.run(run(catalog, sock.getsockname()[:2], args.loss, args.seed, capture))
        if close_capture(capture):
            return 4
        if capture is not None:
            print(f"capture: {capture.writer.packets} packets in {args.pcap}")
        return code
    finally:
        control.stop()
        thread.join(5)
        sock.close()
        print(f"server counters: {core.summary()}")


if __name__ == "__main__":
    raise SystemExit(main())
