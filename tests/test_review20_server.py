"""Review 20: the server's guard counters report what the guards did (pure)."""

from __future__ import annotations

from udp_price.catalog import Catalog
from udp_price.server.core import QuoteServer
from udp_price.server.guards import ReplyCache
from udp_price.wire import QuoteRequest, encode_request

ADDR = ("127.0.0.1", 40000)


def test_cache_evictions_are_counted_in_counters_and_summary() -> None:
    """Every test of counters() saw cache_evictions == 0 only (the one meant to do more sends its
    requests through a rate limiter that drops them before the cache); a counters() that always
    reported 0 passed. Three replies through a one-entry cache evict two."""
    core = QuoteServer(Catalog.from_prices({"apple": 50}), cache=ReplyCache(max_entries=1))
    for rid in range(3):
        assert core.handle_datagram(encode_request(QuoteRequest(rid, "apple", 1, transmission=1)), ADDR, 0.0)
    assert core.cache is not None and core.cache.evictions == 2
    assert core.counters()["cache_evictions"] == 2
    assert "cache_evictions=2" in core.summary().split()
