"""udp-price as a peer: its own server (default flags: rate limiter and reply cache on) and the
library client (QuoteClient.quote for single quotes, quote_stream for bulk). See bench/peers/common.py.

    python bench/peers/udp_peer.py serve
    python bench/peers/udp_peer.py client PORT SINGLES INFLIGHT ROWS ORDERS_CSV
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from common import ROOT, main

from udp_price.client.api import QuoteClient


def serve() -> None:
    catalog = str(ROOT / "catalog.csv")
    os.execv(sys.executable, [sys.executable, str(ROOT / "udp_server.py"), "--port", "0", "-q", "--catalog", catalog])


class Client:
    def __init__(self, client: QuoteClient) -> None:
        self.client = client

    async def one(self, item: str, quantity: int) -> tuple[int, int]:
        r = await self.client.quote(item, quantity)
        return (r.unit_price, r.total) if r.ok else (-1, -1)

    async def many(self, lines: list[tuple[str, int]]) -> list[tuple[int, int]]:
        b = await self.client.quote_batch(lines)
        return [(r.unit_price, r.total) for r in b.results]

    async def stream(self, lines: list[tuple[str, int]]) -> AsyncIterator[tuple[int, int]]:
        async for q in self.client.quote_stream(lines):
            yield (q.unit_price, q.total) if q.ok else (-1, -1)


@asynccontextmanager
async def connect(port: int) -> AsyncIterator[Client]:
    async with QuoteClient(("127.0.0.1", port)) as client:
        yield Client(client)


if __name__ == "__main__":
    main(serve, connect)
