"""The OVERLOADED mark (0x40) is decided before a reply is encoded: the encoder sets it in the kind
byte as it builds the reply (no second copy, no second CRC32), and with keys the tag covers it.
So a mark set (or cleared) on the path fails the tag and the reply is dropped like any forgery:
an on-path party can do no more than drop replies, which congestion control does not take for
congestion. Every reply path carries the mark; a reply cache replay is the reply as first sent."""

from __future__ import annotations

import asyncio
import select
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import CATALOG, expected_prices, serving

import udp_price.server.loop as loop_module
import udp_price.wire as wire_module
import udp_price.wire.framing as framing_module
from udp_price.auth import ClientAuth, Key, ServerAuth, open_signed, sign
from udp_price.auth.trailer import AuthFailure
from udp_price.catalog import Catalog, load_catalog
from udp_price.client.api import QuoteClient
from udp_price.client.congestion import CongestionConfig, CongestionController
from udp_price.client.events import Answered
from udp_price.client.retry import RetryPolicy
from udp_price.client.session import ClientSession
from udp_price.server.core import QuoteServer
from udp_price.server.guards import RateLimiter, ReplyCache
from udp_price.wire import (
    FLAG_OVERLOADED,
    BatchRequest,
    ListRequest,
    QuoteReply,
    QuoteRequest,
    Status,
    decode_any_reply,
    encode_batch_request,
    encode_list_request,
    encode_reply,
    encode_request,
    mark_overloaded,
    seal,
    split_overload_mark,
)
from udp_price.wire.framing import KIND_OFFSET

KEY = Key(1, b"k" * 32)
WALL = 1_800_000_000.0
ADDR = ("127.0.0.1", 40000)
PRICES = {"apple": 50, "pear": 75}


def _reply(rid: int, total: int = 150, flags: int = 0) -> bytes:
    return encode_reply(QuoteReply(rid, Status.OK, "apple", 3, 50, total, 1, transmission=1), flags)


def _signed_request(rid: int) -> bytes:
    return ClientAuth(KEY).sign(encode_request(QuoteRequest(rid, "apple", 3, transmission=1)), WALL)


def _keyed_core(**kwargs: Any) -> QuoteServer:
    return QuoteServer(Catalog.from_prices(PRICES), auth=ServerAuth({KEY.key_id: KEY}, wall_offset_s=0.0), **kwargs)


# ------------------------------------------------------------------ the tag covers the mark


def test_a_signed_reply_marked_after_signing_fails_to_open() -> None:
    marked = mark_overloaded(sign(_reply(0x42), KEY, int(WALL * 1000)))
    with pytest.raises(AuthFailure) as failure:
        open_signed(marked, {KEY.key_id: KEY})
    assert failure.value.reason == "bad_tag"
    assert ClientAuth(KEY).open(marked, WALL) == "bad_tag"


def test_a_reply_marked_by_the_server_opens_with_its_mark() -> None:
    marked_core, plain_core = _keyed_core(), _keyed_core()
    marked_core.overloaded = True
    marked = marked_core.handle_datagram(_signed_request(0x42), ADDR, WALL)
    plain = plain_core.handle_datagram(_signed_request(0x42), ADDR, WALL)
    assert marked is not None and plain is not None
    assert marked[KIND_OFFSET] & FLAG_OVERLOADED and not plain[KIND_OFFSET] & FLAG_OVERLOADED
    opened = open_signed(marked, {KEY.key_id: KEY})
    assert opened.inner[KIND_OFFSET] & FLAG_OVERLOADED, "the mark must reach the session"
    assert split_overload_mark(opened.inner) == (open_signed(plain, {KEY.key_id: KEY}).inner, True)
    reply = decode_any_reply(split_overload_mark(opened.inner)[0])
    assert isinstance(reply, QuoteReply) and (reply.request_id, reply.status, reply.total) == (0x42, Status.OK, 150)
    assert (marked_core.stats["overload.marked"], plain_core.stats["overload.marked"]) == (1, 0)


def test_a_mark_cleared_on_the_path_fails_to_open_too() -> None:
    marked = sign(_reply(0x42, flags=FLAG_OVERLOADED), KEY, int(WALL * 1000))
    cleared = bytearray(marked[:-4])
    cleared[KIND_OFFSET] &= 0xFF ^ FLAG_OVERLOADED
    assert ClientAuth(KEY).open(seal(bytes(cleared)), WALL) == "bad_tag"
    assert ClientAuth(KEY).open(marked, WALL) == _reply(0x42, flags=FLAG_OVERLOADED)


def test_a_keyed_session_takes_the_servers_mark_and_never_a_forged_one() -> None:
    client = ClientAuth(KEY)
    session = ClientSession(now=0.0, congestion=CongestionController())
    for rid in (0x77, 0x78):
        session.send(QuoteRequest(rid, "apple", 3), now=0.0)
    for datagram in session.datagrams_to_send():
        client.sign(datagram, WALL)
    forged = mark_overloaded(sign(_reply(0x77), KEY, int(WALL * 1000)))
    assert client.open(forged, WALL) == "bad_tag"  # never reaches the session: as if dropped
    genuine = client.open(sign(_reply(0x77), KEY, int(WALL * 1000)), WALL)
    assert isinstance(genuine, bytes)
    assert [type(e) for e in session.datagram_received(genuine, now=0.01)] == [Answered]
    assert session.stats["cc.signals.mark"] == 0
    by_server = client.open(sign(_reply(0x78, flags=FLAG_OVERLOADED), KEY, int(WALL * 1000)), WALL)
    assert isinstance(by_server, bytes)
    assert [type(e) for e in session.datagram_received(by_server, now=0.02)] == [Answered]
    assert session.stats["cc.signals.mark"] == 1, session.stats


# ------------------------------------------------------------------ every reply path carries it


def _quote(rid: int = 7, item: str = "apple") -> bytes:
    return encode_request(QuoteRequest(rid, item, 3, transmission=1))


def _batch(rid: int = 8) -> bytes:
    return encode_batch_request(BatchRequest(rid, (("apple", 2), ("pear", 1)), transmission=1))


def _malformed() -> bytes:
    data = bytearray(_quote()[:-4])
    data[-1] = 1  # a reserved byte not zero: MALFORMED, answered
    return seal(bytes(data))


PATHS: dict[str, tuple[Callable[[], bytes], bool]] = {
    "quote, fast path": (_quote, True),
    "quote, general path": (_quote, False),
    "unknown item": (lambda: _quote(item="plum"), True),
    "batch, fast path": (_batch, True),
    "batch, general path": (_batch, False),
    "list page": (lambda: encode_list_request(ListRequest(9, 0)), True),
    "malformed request": (_malformed, True),
}


@pytest.mark.parametrize("keyed", [False, True], ids=["plain", "keyed"])
@pytest.mark.parametrize("path", list(PATHS))
def test_every_reply_path_sets_the_mark_as_it_encodes(path: str, keyed: bool) -> None:
    make, fast = PATHS[path]
    replies = []
    for overloaded in (True, False):
        core = _keyed_core(fast_path=fast) if keyed else QuoteServer(Catalog.from_prices(PRICES), fast_path=fast)
        core.overloaded = overloaded
        request = ClientAuth(KEY).sign(make(), WALL) if keyed else make()
        reply = core.handle_datagram(request, ADDR, WALL)
        assert reply is not None
        replies.append(open_signed(reply, {KEY.key_id: KEY}).inner if keyed else reply)
        assert core.stats["overload.marked"] == int(overloaded)
    marked, plain = replies
    assert marked[KIND_OFFSET] == plain[KIND_OFFSET] | FLAG_OVERLOADED
    assert split_overload_mark(marked) == (plain, True)  # nothing else differs
    decode_any_reply(plain)


def test_busy_replies_carry_the_mark_a_source_near_its_limit_gets() -> None:
    core = QuoteServer(Catalog.from_prices(PRICES), limiter=RateLimiter(rate=1.0, burst=1.0, slip=1))
    first = core.handle_datagram(_quote(1), ADDR, 0.0)
    busy = core.handle_datagram(_quote(2), ADDR, 0.0)
    assert first is not None and busy is not None
    assert not first[KIND_OFFSET] & FLAG_OVERLOADED  # a full bucket: not near the limit
    plain, marked = split_overload_mark(busy)
    assert marked and decode_any_reply(plain).status is Status.BUSY
    assert core.stats["overload.marked"] == 1 and core.stats["rate_limited.busy"] == 1


def _counting_crc32(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count every CRC32 computed (the encoders' seals, the signer's inline CRC32, lines digests):
    a mark applied after the fact would cost one more."""
    calls: list[int] = []
    real = zlib.crc32

    def counted(data: bytes, value: int = 0) -> int:
        calls.append(len(data))
        return real(data, value)

    monkeypatch.setattr(zlib, "crc32", counted)
    return calls


def _no_marking_after_the_fact(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(reply: bytes) -> bytes:
        raise AssertionError("mark_overloaded called on a reply: a second copy and CRC32")

    for module in (framing_module, wire_module):
        monkeypatch.setattr(module, "mark_overloaded", refuse)
    assert not hasattr(loop_module, "mark_overloaded")


@pytest.mark.parametrize("keyed", [False, True], ids=["plain", "keyed"])
@pytest.mark.parametrize("path", list(PATHS))
def test_a_marked_reply_costs_no_second_seal(path: str, keyed: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    make, fast = PATHS[path]
    _no_marking_after_the_fact(monkeypatch)
    seals = []
    for overloaded in (False, True):
        core = _keyed_core(fast_path=fast) if keyed else QuoteServer(Catalog.from_prices(PRICES), fast_path=fast)
        core.overloaded = overloaded
        request = ClientAuth(KEY).sign(make(), WALL) if keyed else make()
        calls = _counting_crc32(monkeypatch)
        reply = core.handle_datagram(request, ADDR, WALL)
        assert reply is not None and bool(reply[KIND_OFFSET] & FLAG_OVERLOADED) is overloaded
        seals.append(len(calls))
    # Marked or not, the same CRC32 work: no re-seal for the mark.
    assert seals[0] > 0 and seals[1] == seals[0], seals


# ------------------------------------------------------------------ the reply cache


@pytest.mark.parametrize("fast", [True, False], ids=["fast path", "general path"])
@pytest.mark.parametrize("first_overloaded", [True, False], ids=["marked first", "plain first"])
def test_a_cache_replay_is_the_reply_as_first_sent(fast: bool, first_overloaded: bool) -> None:
    core = QuoteServer(Catalog.from_prices(PRICES), cache=ReplyCache(), fast_path=fast)
    core.overloaded = first_overloaded
    first = core.handle_datagram(_quote(5), ADDR, 1.0)
    core.overloaded = not first_overloaded
    replay = core.handle_datagram(_quote(5), ADDR, 2.0)
    assert first is not None and replay == first and core.stats["cache_hits"] == 1
    assert bool(first[KIND_OFFSET] & FLAG_OVERLOADED) is first_overloaded
    assert core.stats["overload.marked"] == 2 * int(first_overloaded)  # counts what was sent
    fresh = core.handle_datagram(_quote(6), ADDR, 3.0)  # a new request: the server's state now
    assert fresh is not None and bool(fresh[KIND_OFFSET] & FLAG_OVERLOADED) is not first_overloaded


# ------------------------------------------------------------------ over real sockets


def test_the_serving_loop_marks_through_the_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every reply near the rate limit (near_fraction above 1: always) is marked by the real loop,
    and mark_overloaded is never called."""
    _no_marking_after_the_fact(monkeypatch)
    limiter = RateLimiter(rate=1e9, burst=1e9, near_fraction=2.0)
    with (
        serving(QuoteServer(load_catalog(CATALOG), limiter=limiter)) as running,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s,
    ):
        s.settimeout(5)
        for rid in range(1, 21):
            s.sendto(_quote(rid), running.address)
            reply = s.recv(2048)
            plain, marked = split_overload_mark(reply)
            assert marked and decode_any_reply(plain).request_id == rid
        assert running.core.stats["overload.marked"] == 20 and running.core.stats["internal_errors"] == 0


@pytest.fixture
def relay() -> Iterator[Callable[[tuple[str, int], Callable[[bytes, int], bytes | None]], tuple[str, int]]]:
    """An on-path relay (thread) to ``upstream``: reply number n goes down as ``tamper(reply, n)``
    (None: dropped)."""
    down = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    down.bind(("127.0.0.1", 0))
    up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start(upstream: tuple[str, int], tamper: Callable[[bytes, int], bytes | None]) -> tuple[str, int]:
        up.connect(upstream)
        client: list[Any] = [None]

        def run() -> None:
            n = 0
            while not stop.is_set():
                ready, _, _ = select.select([down, up], [], [], 0.05)
                if down in ready:
                    data, client[0] = down.recvfrom(4096)
                    up.send(data)
                if up in ready:
                    out = tamper(up.recv(4096), n)
                    n += 1
                    if out is not None and client[0] is not None:
                        down.sendto(out, client[0])

        threads.append(threading.Thread(target=run, daemon=True))
        threads[-1].start()
        host, port = down.getsockname()[:2]
        return str(host), int(port)

    yield start
    stop.set()
    for thread in threads:
        thread.join(timeout=5)
        assert not thread.is_alive()
    down.close()
    up.close()


def _every_other(change: Callable[[bytes], bytes | None]) -> Callable[[bytes, int], bytes | None]:
    return lambda data, n: change(data) if n % 2 else data


@pytest.mark.parametrize(
    "attack",
    ["forges the mark on every other reply", "drops every other reply"],
)
def test_an_on_path_marker_against_a_keyed_client_equals_dropping(
    attack: str,
    relay: Callable[[tuple[str, int], Callable[[bytes, int], bytes | None]], tuple[str, int]],
) -> None:
    """A forged mark fails the tag: the client counts the reply as refused and its congestion
    window never hears of it, exactly as if the reply had been dropped. Every quote still right."""
    auth = ServerAuth({KEY.key_id: KEY}, wall_offset_s=time.time() - time.monotonic())
    tamper = _every_other(mark_overloaded if attack.startswith("forges") else lambda data: None)
    prices = expected_prices()
    items = sorted(prices)[:8]
    with serving(QuoteServer(load_catalog(CATALOG), auth=auth)) as running:
        path = relay(running.address, tamper)

        async def run() -> tuple[list[int], dict[str, int]]:
            policy = RetryPolicy(initial_timeout_s=0.05, deadline_s=20.0)
            async with QuoteClient(path, policy, key=KEY, congestion=CongestionConfig(max_window=16)) as client:
                results = await asyncio.gather(*(client.quote(items[i % len(items)], 1 + i % 5) for i in range(200)))
                return [r.total for r in results], dict(client.stats)

        totals, stats = asyncio.run(run())
    assert totals == [prices[items[i % len(items)]] * (1 + i % 5) for i in range(200)]
    assert stats.get("cc.signals.mark", 0) == 0 and stats.get("cc.reductions.mark", 0) == 0, stats
    refused = stats.get("auth.rejected.bad_tag", 0)
    assert (refused > 0) if attack.startswith("forges") else (refused == 0), stats
    assert running.core.stats["overload.marked"] == 0
