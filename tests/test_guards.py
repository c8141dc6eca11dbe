"""Rate limiter and reply cache: pure, clock passed in."""

from __future__ import annotations

import pytest
from helpers import expected_prices

from udp_price.catalog import Catalog
from udp_price.server.core import QuoteServer
from udp_price.server.guards import NEWCOMER_BURSTS, RateLimiter, ReplyCache, Verdict
from udp_price.wire import (
    BatchRequest,
    QuoteRequest,
    Status,
    decode_batch_reply,
    decode_reply,
    encode_batch_request,
    encode_request,
    split_overload_mark,
)


def test_token_bucket_burst_then_slip_every_second() -> None:
    rl = RateLimiter(rate=10, burst=3, slip=2)
    verdicts = [rl.check("a", 0.0) for _ in range(7)]
    assert verdicts == [Verdict.ALLOW] * 3 + [Verdict.DROP, Verdict.SLIP, Verdict.DROP, Verdict.SLIP]
    assert rl.check("b", 0.0) is Verdict.ALLOW, "sources are limited separately"
    assert rl.check("a", 0.1) is Verdict.ALLOW, "0.1 s at 10/s refills one token"
    assert rl.check("a", 0.1) is not Verdict.ALLOW
    assert rl.retry_after_ms("a") == 100


def test_busy_hints_spread_the_retries_out() -> None:
    rl = RateLimiter(rate=100, burst=1, slip=1)
    assert rl.check("a", 0.0) is Verdict.ALLOW
    hints = []
    for _ in range(5):
        assert rl.check("a", 0.0) is Verdict.SLIP
        hints.append(rl.retry_after_ms("a"))
    assert hints == [10, 20, 30, 40, 50], "the n-th over-limit request is told n / rate"
    assert rl.check("a", 0.5) is Verdict.ALLOW
    assert rl.retry_after_ms("a") == 10, "the queue has drained at rate: back to one token's wait"


def test_slip_zero_means_silence() -> None:
    rl = RateLimiter(rate=1, burst=1, slip=0)
    assert [rl.check("a", 0.0) for _ in range(4)] == [Verdict.ALLOW] + [Verdict.DROP] * 3


def test_limiter_memory_is_bounded() -> None:
    rl = RateLimiter(rate=1, burst=1, max_sources=100)
    for i in range(10_000):
        # One new source a second: every one is admitted (the newcomers' bucket refills at rate).
        assert rl.check(f"10.0.{i // 256}.{i % 256}", float(i)) is Verdict.ALLOW
    assert len(rl) == 100


def test_rotating_sources_cannot_bypass_the_limit() -> None:
    """More sources than the table holds, each sending a full burst before the next: every source
    is 'new', and a new source used to start with a full bucket, so rotation allowed everything.
    New sources now draw their starting tokens from one shared pool (16 bursts, refilled at rate):
    all of them together get at most 16 x burst + rate x elapsed."""
    rl = RateLimiter(rate=100, burst=50, max_sources=100)
    allowed = 0
    for i in range(2_000):
        now = i * 0.0005  # 2,000 sources in 1 s, 50 requests each
        allowed += sum(rl.check(f"10.0.{i // 256}.{i % 256}", now) is Verdict.ALLOW for _ in range(50))
    assert allowed <= NEWCOMER_BURSTS * 50 + 100 * 1.0 + 1
    assert rl.newcomers_refused > 0
    assert len(rl) <= 100


def test_known_sources_are_not_charged_for_newcomers() -> None:
    rl = RateLimiter(rate=100, burst=5, max_sources=100)
    assert rl.check("client", 0.0) is Verdict.ALLOW
    for i in range(100):
        rl.check(f"spoofed-{i}", 0.0)  # drains the newcomers' pool
    assert rl.newcomers_refused > 0
    assert rl.check("client", 0.0) is Verdict.ALLOW, "a source already known keeps its own bucket"


def test_sixteen_clients_may_start_at_full_speed_at_once() -> None:
    rl = RateLimiter(rate=100, burst=5, max_sources=100)
    for c in range(NEWCOMER_BURSTS):
        assert all(rl.check(f"client-{c}", 0.0) is Verdict.ALLOW for _ in range(5))


def test_cache_hit_needs_same_request_bytes_and_youth() -> None:
    cache = ReplyCache(max_entries=10, max_age_s=5.0)
    cache.put(("h", 1, 7), b"request-a", b"reply", 0.0)
    assert cache.get(("h", 1, 7), b"request-a", 4.0) == b"reply"
    assert cache.get(("h", 1, 7), b"request-b", 4.0) is None, "same id, different request: answered afresh"
    cache.put(("h", 1, 8), b"request-a", b"r8", 0.0)
    assert cache.get(("h", 1, 8), b"request-a", 5.5) is None, "too old"
    assert cache.evictions == 2


def test_cache_is_bounded_in_entries_and_age() -> None:
    cache = ReplyCache(max_entries=100, max_age_s=1.0)
    for i in range(1000):
        cache.put(("h", 1, i), b"q", b"x", i * 0.001)
    assert len(cache) == 100 and cache.evictions == 900
    for i in range(64):  # the age sweep runs every 64th put
        cache.put(("h", 2, i), b"q", b"x", 10.0)
    assert len(cache) == 64, "everything older than max_age is gone"
    assert cache.get(("h", 1, 999), b"q", 10.0) is None


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate=0)


PRICES = expected_prices()
ADDR = ("127.0.0.1", 5555)


def test_server_answers_busy_with_retry_after_and_never_amplifies() -> None:
    core = QuoteServer(Catalog.from_prices(PRICES), limiter=RateLimiter(rate=10, burst=1, slip=1))
    data = encode_request(QuoteRequest(1, "apple", 1))
    assert decode_reply(core.handle_datagram(data, ADDR, 0.0) or b"").status is Status.OK
    busy = core.handle_datagram(data, ADDR, 0.0)
    assert busy is not None and len(busy) <= len(data)
    plain, marked = split_overload_mark(busy)
    assert marked, "a source at its limit gets the OVERLOADED mark, set by the core as it encodes"
    reply = decode_reply(plain)
    assert (reply.status, reply.item, reply.quantity, reply.retry_after_ms) == (Status.BUSY, "apple", 1, 100)
    batch = encode_batch_request(BatchRequest(2, (("apple", 1),)))
    batch_busy = core.handle_datagram(batch, ADDR, 0.0)
    assert batch_busy is not None and len(batch_busy) < len(batch)
    batch_plain, batch_marked = split_overload_mark(batch_busy)
    assert batch_marked and decode_batch_reply(batch_plain).status is Status.BUSY
    assert core.stats["rate_limited.busy"] == 2 and core.stats["overload.marked"] == 2


def test_retransmission_gets_the_same_reply_across_a_reload() -> None:
    core = QuoteServer(Catalog.from_prices(PRICES), cache=ReplyCache())
    first = encode_request(QuoteRequest(42, "apple", 2))
    before = core.handle_datagram(first, ADDR, 0.0)
    core.set_catalog(Catalog.from_prices(PRICES | {"apple": 99}))
    assert core.handle_datagram(first, ADDR, 1.0) == before, "byte-identical replay"
    assert decode_reply(before or b"").total == 100
    fresh = core.handle_datagram(encode_request(QuoteRequest(43, "apple", 2)), ADDR, 1.0)
    assert decode_reply(fresh or b"").total == 198, "a new request sees the new catalog"
    other_port = core.handle_datagram(first, ("127.0.0.1", 5556), 1.0)
    assert decode_reply(other_port or b"").total == 198, "the cache is per source address"
    assert core.stats["cache_hits"] == 1


def test_cache_memory_is_bounded_in_bytes_too() -> None:
    from udp_price.server.guards import ENTRY_OVERHEAD

    cache = ReplyCache(max_entries=1_000_000, max_bytes=100 * (ENTRY_OVERHEAD + 76))
    for i in range(1000):
        cache.put(("h", 1, i), b"request %d" % i, b"r" * 76, 0.0)
    assert len(cache) == 100 and cache.bytes == 100 * (ENTRY_OVERHEAD + 76) and cache.evictions == 900
    assert cache.get(("h", 1, 999), b"request 999", 0.0) == b"r" * 76, "the newest are kept"
    assert cache.get(("h", 1, 0), b"request 0", 0.0) is None
