"""The quote page's one UDP client, kept for the page's whole life: the threads that serve HTTP
share it, so the round-trip time it has learned (SRTT, RTO: RFC 6298) carries from one page load
to the next, and no socket is opened per request. It runs on its own event loop thread; each
call blocks the calling HTTP thread until the answer or the policy's deadline."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from udp_price.address import Address
from udp_price.auth import Key
from udp_price.client.api import QuoteClient, QuoteResult
from udp_price.client.retry import RetryPolicy

T = TypeVar("T")
GRACE_S = 5.0
"""How long past the policy's deadline a caller waits before judging the client thread stuck."""


class KeptClient:
    def __init__(self, server: Address, policy: RetryPolicy, key: Key | None = None) -> None:
        self.server = server
        self.policy = policy
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="udp-price-web-client", daemon=True)
        self._thread.start()
        self.client = QuoteClient(server, policy, key=key)
        self._call(self.client.__aenter__())

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout=(self.policy.deadline_s or 60.0) + GRACE_S)

    def quote(self, item: str, quantity: int) -> QuoteResult:
        return self._call(self.client.quote(item, quantity))

    def list_items(self, prefix: str = "", limit: int | None = None) -> tuple[int, list[tuple[str, int]]]:
        return self._call(self.client.list_items(prefix, limit))

    def local_port(self) -> int | None:
        transport = self.client._transport
        name = transport.get_extra_info("sockname") if transport is not None else None
        return int(name[1]) if name else None

    def close(self) -> None:
        self._call(self.client.__aexit__(None, None, None))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()
