"""CoAP peer (aiocoap, RFC 7252): POST /quote and POST /batch (up to 32 lines), JSON bodies,
confirmable messages. RFC 7252's NSTART=1 allows one outstanding request per endpoint, so the
client opens 64 contexts (64 UDP sockets) to have 64 requests in flight. See bench/peers/common.py.

    python bench/peers/coap_peer.py serve
    python bench/peers/coap_peer.py client PORT SINGLES INFLIGHT ROWS ORDERS_CSV
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiocoap
import aiocoap.resource as resource
from common import PRICES, WINDOW, main


class Quote(resource.Resource):
    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        body = json.loads(request.payload)
        unit = PRICES[body["item"]]
        return aiocoap.Message(payload=json.dumps([unit, unit * body["quantity"]]).encode())


class Batch(resource.Resource):
    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        lines = json.loads(request.payload)
        return aiocoap.Message(payload=json.dumps([[PRICES[i], PRICES[i] * q] for i, q in lines]).encode())


def serve() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # a free port; aiocoap binds it itself
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def run() -> None:
        site = resource.Site()
        site.add_resource(["quote"], Quote())
        site.add_resource(["batch"], Batch())
        await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", port))
        print(f"listening on 127.0.0.1:{port}", flush=True)
        await asyncio.get_running_loop().create_future()

    asyncio.run(run())


class Client:
    def __init__(self, contexts: asyncio.Queue[aiocoap.Context], base: str) -> None:
        self.contexts, self.base = contexts, base

    async def _post(self, path: str, body: Any) -> Any:
        ctx = await self.contexts.get()  # one request at a time per context (NSTART=1)
        try:
            message = aiocoap.Message(code=aiocoap.POST, uri=self.base + path, payload=json.dumps(body).encode())
            response = await ctx.request(message).response
        finally:
            self.contexts.put_nowait(ctx)
        return json.loads(response.payload)

    async def one(self, item: str, quantity: int) -> tuple[int, int]:
        unit, total = await self._post("/quote", {"item": item, "quantity": quantity})
        return unit, total

    async def many(self, lines: list[tuple[str, int]]) -> list[tuple[int, int]]:
        return [(unit, total) for unit, total in await self._post("/batch", lines)]


@asynccontextmanager
async def connect(port: int) -> AsyncIterator[Client]:
    contexts: asyncio.Queue[aiocoap.Context] = asyncio.Queue()
    for _ in range(WINDOW):
        contexts.put_nowait(await aiocoap.Context.create_client_context())
    yield Client(contexts, f"coap://127.0.0.1:{port}")
    while not contexts.empty():
        await contexts.get_nowait().shutdown()


if __name__ == "__main__":
    main(serve, connect)
