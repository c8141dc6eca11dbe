"""The proxy's control API: a small HTTP/1.1 server on loopback, in the manner of Toxiproxy's
(which listens on 127.0.0.1:8474), to read the counters and replace the fault plan while the
proxy runs. It has no authentication, so it refuses any address that is not loopback.

    GET  /counters       {"up.received": 12, ...}
    GET  /plan           {"seed": 7, "up": {...}, "down": {...}}
    PUT  /plan           body {"faults": ["--drop", "30%", "--delay", "100ms"], "seed": 7 (optional)}
                         the same words as the command line; the new plan replaces the old at once
                         (flows, counters and the held datagrams stay)

Errors are JSON too: {"error": "...", "code": "bad_plan" | "bad_request" | "not_found" | ...}.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from udp_price.faults.plan import FaultPlan
from udp_price.faults.relay import FaultProxy

MAX_HEAD = 8192
MAX_BODY = 65536
READ_TIMEOUT_S = 5.0
"""A client that sends nothing is dropped after this long: one idle connection costs one task, briefly."""
STOP_WAIT_S = 1.0
"""How long stop() waits for open connections to finish once their sockets are closed."""

BODY_SHAPE = 'body must be {"faults": [flags as strings], "seed": int (optional)}'
PlanParser = Callable[[list[str], int], FaultPlan]


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def plan_as_json(plan: FaultPlan) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        if isinstance(value, frozenset):
            return sorted(value)
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    result: dict[str, Any] = plain(asdict(plan))
    return result


class ControlServer:
    """Serve the API for ``proxy``; ``parse_plan(flags, seed)`` turns fault flags into a plan or raises ValueError."""

    def __init__(self, proxy: FaultProxy, parse_plan: PlanParser) -> None:
        self.proxy = proxy
        self.parse_plan = parse_plan
        self._server: asyncio.Server | None = None
        self._open: dict[asyncio.StreamWriter, asyncio.Task[None]] = {}
        """Connections being served: stop() ends them itself, so none is left for asyncio.run's
        teardown to cancel (which prints a CancelledError traceback per connection)."""

    async def start(self, host: str, port: int) -> tuple[str, int]:
        if not is_loopback(host):
            raise ValueError(f"the control API has no authentication: it listens on loopback only, not {host}")
        self._server = await asyncio.start_server(self._serve_one, host, port)
        bound = self._server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        await asyncio.sleep(0)  # connections accepted just now start their task and register here
        for writer in list(self._open):  # the reader sees end of file: each answer ends as a bad request
            writer.close()
        if self._open:
            await asyncio.wait(list(self._open.values()), timeout=STOP_WAIT_S)
        await self._server.wait_closed()

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) for one request: the whole API, without sockets."""
        if path == "/counters" and method == "GET":
            return 200, dict(sorted(self.proxy.stats.items()))
        if path == "/plan" and method == "GET":
            return 200, plan_as_json(self.proxy.plan)
        if path == "/plan" and method in ("PUT", "POST"):
            return self._replace_plan(body)
        if path in ("/counters", "/plan"):
            return 405, {"error": f"{method} is not allowed on {path}", "code": "method_not_allowed"}
        return 404, {"error": f"no such resource {path[:100]!r}", "code": "not_found"}

    def _replace_plan(self, body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            request = json.loads(body)
            flags = request["faults"]
            seed = request.get("seed", self.proxy.plan.seed)
            if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags) or type(seed) is not int:
                raise TypeError
        except (ValueError, TypeError, KeyError, AttributeError):
            return 400, {
                "error": 'body must be {"faults": [flags as strings], "seed": int (optional)}',
                "code": "bad_request",
            }
        try:
            plan = self.parse_plan(flags, seed)
        except ValueError as e:
            return 400, {"error": str(e), "code": "bad_plan"}
        self.proxy.plan = plan
        self.proxy.stats["plan_replaced"] += 1
        return 200, plan_as_json(plan)

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._open[writer] = task
        try:
            await self._answer_one(reader, writer)
        finally:
            del self._open[writer]

    async def _answer_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, payload = await asyncio.wait_for(self._read_and_answer(reader), READ_TIMEOUT_S)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            status, payload = 400, {"error": "incomplete or oversized request", "code": "bad_request"}
        data = json.dumps(payload).encode() + b"\n"
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(ConnectionError):
            writer.write(head.encode() + data)
            await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    async def _read_and_answer(self, reader: asyncio.StreamReader) -> tuple[int, dict[str, Any]]:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > MAX_HEAD:
            return 431, {"error": "request head too large", "code": "bad_request"}
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            return 400, {"error": "not an HTTP request line", "code": "bad_request"}
        method, path = parts[0], parts[1]
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                value = value.strip()
                if not (value.isascii() and value.isdigit() and len(value) <= 6) or int(value) > MAX_BODY:
                    return 413, {"error": f"body over {MAX_BODY} bytes", "code": "bad_request"}
                length = int(value)
        body = await reader.readexactly(length) if length else b""
        return self.answer(method, path, body)


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 413: "Payload Too Large"}
_REASONS[431] = "Request Header Fields Too Large"
