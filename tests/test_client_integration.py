"""Real client against a real server on loopback, and against fake servers that misbehave."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from helpers import RunningServer, expected_prices

from udp_price.catalog import Catalog
from udp_price.client.api import NoAnswer, QuoteClient, QuoteResult, quote_once
from udp_price.client.retry import RetryPolicy
from udp_price.server.core import QuoteServer
from udp_price.wire import QuoteReply, Status, decode_reply, decode_request, encode_reply

FAST = RetryPolicy(initial_timeout_s=0.05, max_attempts=4, deadline_s=2.0, min_timeout_s=0.02, max_timeout_s=0.2)
PATIENT = RetryPolicy(initial_timeout_s=0.05, max_attempts=6, deadline_s=20.0, min_timeout_s=0.02, max_timeout_s=0.5)
"""For fake servers that answer only a later transmission: the timer stays fast, but a loaded
machine that runs the fake server's thread late must not exhaust the attempts or the deadline."""
CORE = QuoteServer(Catalog.from_prices(expected_prices()))
Handler = Callable[[bytes, tuple[str, int], socket.socket, int], object]


@contextmanager
def fake_server(handler: Handler) -> Iterator[tuple[str, int]]:
    """A UDP socket on loopback whose behaviour is ``handler(data, addr, sock, n)`` for the n-th datagram."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.05)
    stop = threading.Event()

    def loop() -> None:
        n = 0
        while not stop.is_set():
            try:
                data, addr = sock.recvfrom(2048)
            except TimeoutError:
                continue
            n += 1
            handler(data, addr, sock, n)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()
    finally:
        stop.set()
        thread.join(5)
        sock.close()


def real_reply(data: bytes) -> bytes:
    out = CORE.handle_datagram(data, ("127.0.0.1", 1), 0.0)
    assert out is not None
    return out


async def quote_with_stats(
    addr: tuple[str, int], item: str, qty: int, policy: RetryPolicy = FAST
) -> tuple[QuoteResult | NoAnswer, dict[str, int]]:
    async with QuoteClient(addr, policy) as client:
        try:
            result: QuoteResult | NoAnswer = await client.quote(item, qty)
        except NoAnswer as e:
            result = e
        return result, dict(client.stats)


def test_quotes_against_real_server(server: RunningServer) -> None:
    prices = expected_prices()

    async def run() -> list[QuoteResult]:
        async with QuoteClient(server.address, FAST) as client:
            return await asyncio.gather(*(client.quote(item, 3) for item in prices))

    results = asyncio.run(run())
    assert [(r.item, r.status, r.total) for r in results] == [(i, Status.OK, 3 * p) for i, p in prices.items()]
    assert len({r.request_id for r in results}) == len(results), "every request gets its own id"
    assert server.core.stats["status.OK"] == len(prices)


def test_unknown_item_is_a_status_not_an_exception(server: RunningServer) -> None:
    result = quote_once(server.address, "kiwi", 1, FAST)
    assert result.status is Status.UNKNOWN_ITEM and not result.ok


def test_silent_server_gives_no_answer_after_all_attempts() -> None:
    seen: list[int] = []
    with fake_server(lambda data, addr, sock, n: seen.append(decode_request(data).request_id)) as addr:
        result, stats = asyncio.run(quote_with_stats(addr, "apple", 1))
    assert isinstance(result, NoAnswer)
    assert result.attempts == FAST.max_attempts == len(seen)
    assert len(set(seen)) == 1, "every retransmission carries the same request id"
    assert stats["retransmissions"] == FAST.max_attempts - 1


def test_reply_with_wrong_id_is_ignored() -> None:
    """Each of the first two requests draws a forged reply (our id with one bit flipped); the true
    answer follows the second forgery. Only the true answer may be taken, and both forgeries are
    counted: they travel the same path ahead of it, so both arrive before it."""

    def handler(data: bytes, addr: tuple[str, int], sock: socket.socket, n: int) -> None:
        if n > 2:
            return  # a third transmission (the answer to the second was late): nothing more to say
        good = decode_reply(real_reply(data))
        forged = QuoteReply(good.request_id ^ 1, Status.OK, good.item, good.quantity, 1, 1, 0)
        sock.sendto(encode_reply(forged), addr)
        if n == 2:
            sock.sendto(real_reply(data), addr)

    with fake_server(handler) as addr:
        result, stats = asyncio.run(quote_with_stats(addr, "apple", 4, PATIENT))
    assert isinstance(result, QuoteResult)
    assert result.total == 200 and result.unit_price == 50
    assert stats["ignored.unknown_id"] == 2 and stats["accepted"] == 1
    # The answer exists only once the second transmission reached the server; how many more the
    # timer sent meanwhile depends on scheduling, but each one is a counted retransmission.
    assert result.attempts >= 2
    assert result.attempts == stats["sent"] == 1 + stats["retransmissions"]


def test_reply_from_wrong_port_is_never_accepted() -> None:
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    with other, fake_server(lambda data, addr, sock, n: other.sendto(real_reply(data), addr)) as addr:
        result, stats = asyncio.run(quote_with_stats(addr, "apple", 1))
    assert isinstance(result, NoAnswer), "a perfect reply from the wrong port must not be accepted"
    assert stats.get("accepted", 0) == 0


def test_corrupted_and_mismatched_replies_are_ignored() -> None:
    """The first three requests each draw a corrupted reply and one for another quantity; the true
    answer follows the third pair. Every bad reply is counted, the answer is the true one."""

    def handler(data: bytes, addr: tuple[str, int], sock: socket.socket, n: int) -> None:
        if n > 3:
            return  # a fourth transmission (the answer to the third was late): nothing more to say
        good = real_reply(data)
        corrupted = bytearray(good)
        corrupted[50] ^= 0x10
        sock.sendto(bytes(corrupted), addr)
        g = decode_reply(good)
        wrong_qty = QuoteReply(g.request_id, Status.OK, g.item, g.quantity + 1, g.unit_price, g.total + 50, 0)
        sock.sendto(encode_reply(wrong_qty), addr)
        if n == 3:
            sock.sendto(good, addr)

    with fake_server(handler) as addr:
        result, stats = asyncio.run(quote_with_stats(addr, "apple", 2, PATIENT))
    assert isinstance(result, QuoteResult)
    assert (result.total, result.quantity) == (100, 2)
    assert stats["ignored.malformed.bad_checksum"] == 3
    assert stats["ignored.invalid.echo_mismatch"] == 3
    assert stats["accepted"] == 1
    assert result.attempts >= 3, "the true answer exists only once the third transmission arrived"
    assert result.attempts == stats["sent"] == 1 + stats["retransmissions"]


def test_duplicated_replies_are_used_once() -> None:
    def handler(data: bytes, addr: tuple[str, int], sock: socket.socket, n: int) -> None:
        for _ in range(3):
            sock.sendto(real_reply(data), addr)

    def unused(stats: Counter[str]) -> int:
        """Replies beyond the one accepted per request: three come back for every datagram sent."""
        return 3 * stats["sent"] - stats["accepted"]

    async def run(addr: tuple[str, int]) -> tuple[list[QuoteResult], dict[str, int]]:
        async with QuoteClient(addr, PATIENT) as client:
            results = [await client.quote("pear", q) for q in (1, 2, 3)]
            for _ in range(500):  # wait (at most 10 s) for the last duplicates to arrive
                if client.stats["ignored.duplicate"] >= unused(client.stats):
                    break
                await asyncio.sleep(0.02)
            return results, dict(client.stats)

    with fake_server(handler) as addr:
        results, stats = asyncio.run(run(addr))
    assert [r.total for r in results] == [55, 110, 165]
    assert stats["accepted"] == 3
    # Each retransmission (on a loaded machine the timer can beat the fake server) draws three more.
    assert stats["ignored.duplicate"] == unused(Counter(stats)) == 3 * (3 + stats.get("retransmissions", 0)) - 3


def test_item_too_long_is_refused_before_sending(server: RunningServer) -> None:
    with pytest.raises(ValueError, match="the wire field holds 32"):
        quote_once(server.address, "x" * 40, 1, FAST)
    assert server.core.stats["requests"] == 0


def test_rack_retransmits_a_lost_request_once_later_ones_are_answered(server: RunningServer) -> None:
    """Request 0's first datagram is lost; answers to requests sent after it reveal the loss
    long before its 1-second timer would."""
    from udp_price.faults.plan import FaultPlan, Faults
    from udp_price.faults.relay import FaultProxy

    slow_timer = RetryPolicy(initial_timeout_s=1.0, min_timeout_s=1.0, max_timeout_s=2.0)

    async def run() -> tuple[list[QuoteResult], dict[str, int]]:
        plan = FaultPlan(up=Faults(drop_indices=frozenset({1})))
        async with FaultProxy(plan, upstream=server.address) as proxy, QuoteClient(proxy.address, slow_timer) as c:
            await c.quote("apple", 1)
            # RACK runs at its own pace once the path has been watched for an initial RTO.
            loop = asyncio.get_running_loop()
            for _ in range(100):
                if c.session.loss.learned(loop.time()):
                    break
                await asyncio.sleep(0.02)
            results = await asyncio.gather(*(c.quote("apple", q) for q in range(1, 11)))
            return list(results), dict(c.stats)

    results, stats = asyncio.run(run())
    assert [r.total for r in results] == [50 * q for q in range(1, 11)]
    assert results[0].attempts == 2 and all(r.attempts == 1 for r in results[1:])
    assert stats["retransmissions.rack"] == 1 and stats["retransmissions"] == 1


def test_listing_against_a_server_without_list_messages_fails_fast() -> None:
    """A server that predates list messages answers MALFORMED with our id: say so, do not time out."""
    from udp_price.client.api import list_once
    from udp_price.wire import QuoteError

    def old_server(data: bytes, addr: tuple[str, int], sock: socket.socket, n: int) -> None:
        rid = int.from_bytes(data[4:12], "big")
        sock.sendto(encode_reply(QuoteReply(rid, Status.MALFORMED, "", 0)), addr)

    with fake_server(old_server) as addr, pytest.raises(QuoteError, match="too old to list its catalog"):
        list_once(addr, FAST)


def test_a_lying_server_never_yields_an_ok_row() -> None:
    """Every batch reply is intact and bound to its request (id, echo, lines digest), but one
    line's total is off by a cent: the bulk run must fail every row explicitly, never print it."""
    import dataclasses
    import io

    from udp_price.bulk.pipeline import BulkOptions, read_rows, run_bulk
    from udp_price.bulk.results import CsvSink
    from udp_price.client.recovery import RetryBudget
    from udp_price.wire import LineResult, decode_batch_reply, encode_batch_reply

    def liar(data: bytes, addr: tuple[str, int], sock: socket.socket, n: int) -> None:
        honest = decode_batch_reply(real_reply(data))
        first = honest.results[0]
        lie = (LineResult(first.status, first.unit_price, first.total + 1), *honest.results[1:])
        sock.sendto(encode_batch_reply(dataclasses.replace(honest, results=lie)), addr)

    orders = "item,quantity\n" + "".join(f"apple,{q}\n" for q in range(1, 41))

    async def run() -> tuple[str, dict[str, int]]:
        out = io.StringIO()
        header, rows = read_rows(io.StringIO(orders))
        async with QuoteClient(addr, FAST, budget=RetryBudget()) as client:
            await run_bulk(rows, client, CsvSink(out, header), BulkOptions(window=4, batch=4))
            return out.getvalue(), dict(client.stats)

    with fake_server(liar) as addr:
        text, stats = asyncio.run(run())
    statuses = [line.split(",")[4] for line in text.splitlines()[1:]]
    assert len(statuses) == 40 and "OK" not in statuses, statuses
    assert stats["ignored.invalid.total_not_price_times_quantity"] >= 10
