"""HTTP/1.1 + JSON peer: an aiohttp server (POST /quote, POST /batch of up to 32 lines) and an
aiohttp client with one keep-alive connection pool of 64. See bench/peers/common.py.

    python bench/peers/http_aiohttp.py serve
    python bench/peers/http_aiohttp.py client PORT SINGLES INFLIGHT ROWS ORDERS_CSV
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web
from common import PRICES, WINDOW, main


async def quote(request: web.Request) -> web.Response:
    body = await request.json()
    unit = PRICES[body["item"]]
    return web.json_response({"unit": unit, "total": unit * body["quantity"]})


async def batch(request: web.Request) -> web.Response:
    lines = await request.json()
    return web.json_response([[PRICES[item], PRICES[item] * q] for item, q in lines])


def serve() -> None:
    app = web.Application()
    app.add_routes([web.post("/quote", quote), web.post("/batch", batch)])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    print(f"listening on 127.0.0.1:{sock.getsockname()[1]}", flush=True)
    web.run_app(app, sock=sock, print=None, access_log=None)


class Client:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session, self.base = session, base

    async def one(self, item: str, quantity: int) -> tuple[int, int]:
        async with self.session.post(self.base + "/quote", json={"item": item, "quantity": quantity}) as r:
            got = await r.json()
        return got["unit"], got["total"]

    async def many(self, lines: list[tuple[str, int]]) -> list[tuple[int, int]]:
        async with self.session.post(self.base + "/batch", json=lines) as r:
            return [(unit, total) for unit, total in await r.json()]


@asynccontextmanager
async def connect(port: int) -> AsyncIterator[Client]:
    connector = aiohttp.TCPConnector(limit=WINDOW)  # keep-alive: 64 connections, reused
    async with aiohttp.ClientSession(connector=connector) as session:
        yield Client(session, f"http://127.0.0.1:{port}")


if __name__ == "__main__":
    main(serve, connect)
