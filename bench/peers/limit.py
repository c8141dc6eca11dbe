"""The "limit" row: a minimal pipelined client for the udp-price server. The wire format's batch
and quote messages over one connected UDP socket, 32 rows a datagram, 64 datagrams in flight,
no retries, no loss detection, no reply checks beyond the request id (a lost datagram fails the
run by timeout). What any client of this server could reach at best. See bench/peers/common.py.

    python bench/peers/limit.py client PORT SINGLES INFLIGHT ROWS ORDERS_CSV
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from common import main
from udp_peer import serve

from udp_price.wire import (
    BatchReply,
    BatchRequest,
    QuoteRequest,
    decode_any_reply,
    encode_batch_request,
    encode_request,
)


class Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.waiting: dict[int, asyncio.Future[Any]] = {}
        self.transport: Any = None

    def datagram_received(self, data: bytes, addr: Any) -> None:
        reply = decode_any_reply(data)
        future = self.waiting.pop(reply.request_id, None)
        if future is not None and not future.done():
            future.set_result(reply)

    async def _ask(self, rid: int, data: bytes) -> Any:
        future = self.waiting[rid] = asyncio.get_running_loop().create_future()
        self.transport.sendto(data)
        return await future

    async def one(self, item: str, quantity: int) -> tuple[int, int]:
        rid = secrets.randbits(64)
        r = await self._ask(rid, encode_request(QuoteRequest(rid, item, quantity, transmission=1)))
        return r.unit_price, r.total

    async def many(self, lines: list[tuple[str, int]]) -> list[tuple[int, int]]:
        rid = secrets.randbits(64)
        r: BatchReply = await self._ask(rid, encode_batch_request(BatchRequest(rid, tuple(lines), transmission=1)))
        return [(x.unit_price, x.total) for x in r.results]


@asynccontextmanager
async def connect(port: int) -> AsyncIterator[Client]:
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", port))
    client.transport = transport
    try:
        yield client
    finally:
        transport.close()


if __name__ == "__main__":
    main(serve, connect)
