"""gRPC peer (grpc.aio): unary calls One and Batch (up to 32 lines) over one HTTP/2 channel,
JSON bodies through generic method handlers, so nothing is generated at build time.
See bench/peers/common.py.

    python bench/peers/grpc_peer.py serve
    python bench/peers/grpc_peer.py client PORT SINGLES INFLIGHT ROWS ORDERS_CSV
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
from common import PRICES, main


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


async def one(request: dict[str, Any], context: Any) -> list[int]:
    unit = PRICES[request["item"]]
    return [unit, unit * request["quantity"]]


async def batch(request: list[list[Any]], context: Any) -> list[list[int]]:
    return [[PRICES[item], PRICES[item] * q] for item, q in request]


def handler(fn: Any) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=json.loads, response_serializer=dumps)


def serve() -> None:
    async def run() -> None:
        server = grpc.aio.server()
        methods = {"One": handler(one), "Batch": handler(batch)}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("quote.Quotes", methods),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(f"listening on 127.0.0.1:{port}", flush=True)
        await server.wait_for_termination()

    asyncio.run(run())


class Client:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._one = channel.unary_unary("/quote.Quotes/One", request_serializer=dumps, response_deserializer=json.loads)
        self._many = channel.unary_unary(
            "/quote.Quotes/Batch", request_serializer=dumps, response_deserializer=json.loads
        )

    async def one(self, item: str, quantity: int) -> tuple[int, int]:
        unit, total = await self._one({"item": item, "quantity": quantity})
        return unit, total

    async def many(self, lines: list[tuple[str, int]]) -> list[tuple[int, int]]:
        return [(unit, total) for unit, total in await self._many(lines)]


@asynccontextmanager
async def connect(port: int) -> AsyncIterator[Client]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield Client(channel)


if __name__ == "__main__":
    main(serve, connect)
