"""Congestion control: the pure controller, the window inside the sans-I/O session, the server's
OVERLOADED mark (bit 0x40 of the reply's kind byte) and where the server sets it."""

from __future__ import annotations

import socket
import time
import zlib

import pytest
from helpers import expected_prices
from overloadlib import closed_loop, pair_of_sockets, replies, send_quotes, wake_up
from sessionsim import Sim, steady

from udp_price.catalog import Catalog
from udp_price.client.congestion import BUSY, MARK, CongestionConfig, CongestionController
from udp_price.client.events import Answered
from udp_price.client.retry import RetryPolicy
from udp_price.client.session import ClientSession
from udp_price.server import loop
from udp_price.server.core import QuoteServer
from udp_price.server.guards import RateLimiter
from udp_price.server.overload import CLOCK_STEP_S, DEEP_BACKLOG, DEEP_WAIT_S, READ_DROPS_BURST, OverloadDetector
from udp_price.wire import (
    FLAG_OVERLOADED,
    QuoteRequest,
    Status,
    decode_any_reply,
    encode_request,
    mark_overloaded,
    split_overload_mark,
)

PRICES = expected_prices()
RTT = 0.01


def cc(**kw: object) -> CongestionController:
    return CongestionController(CongestionConfig(**kw))  # type: ignore[arg-type]


def answer_round(c: CongestionController, now: float, rtt: float = RTT) -> None:
    """One round trip's worth of answers to a full window, sent at ``now``, arriving at now + rtt."""
    for _ in range(c.window):
        c.on_answered(now + rtt, now, rtt, in_flight=c.window)


# ---------------------------------------------------------------- the pure controller


def test_starts_small_doubles_per_round_trip_then_stops_at_the_maximum() -> None:
    c = cc(max_window=64)
    seen = [c.window]
    for k in range(6):
        answer_round(c, k * RTT)
        seen.append(c.window)
    assert seen == [4, 8, 16, 32, 64, 64, 64]


def test_an_unused_window_does_not_grow() -> None:
    c = cc()
    for k in range(10):
        c.on_answered(k * RTT + RTT, k * RTT, RTT, in_flight=0)  # one request at a time
    assert c.window == 4


@pytest.mark.parametrize("why", [MARK, BUSY])
def test_a_mark_or_busy_halves_the_window_once_per_round_trip(why: str) -> None:
    c = cc()
    for k in range(3):
        answer_round(c, k * RTT)
    assert c.window == 32
    assert c.on_congestion(1.0, 0.99, why)
    assert c.window == 16
    # More signals about transmissions sent before the reduction: the same episode.
    assert not c.on_congestion(1.001, 0.995, why)
    assert c.window == 16
    # A signal about a transmission sent after it: a new episode.
    assert c.on_congestion(1.015, 1.005, why)  # (before the slowdown due at 2.0, on the wall-clock grid)
    assert c.window == 8
    assert c.stats[f"cc.reductions.{why}"] == 2


def test_after_a_reduction_growth_is_additive_one_request_per_round_trip() -> None:
    c = cc()
    for k in range(3):
        answer_round(c, k * RTT)
    c.on_congestion(1.0, 0.99, MARK)
    c.next_slowdown_at = float("inf")  # (the periodic slowdown has a test of its own)
    windows = []
    for k in range(4):
        answer_round(c, 1.0 + k * RTT)
        windows.append(round(c.cwnd, 1))
    assert windows == pytest.approx([17, 18, 19, 20], abs=0.25)  # about one per round trip


def test_never_below_one_nor_above_the_maximum() -> None:
    c = cc(max_window=6, initial_window=4)
    for k in range(20):
        answer_round(c, k * RTT)
    assert c.window == 6
    for k in range(20):
        c.on_congestion(2.0 + k, 2.0 + k - 0.001, MARK)
    assert c.window == 1 and c.cwnd >= 1.0


def test_queueing_delay_above_the_target_shrinks_the_window() -> None:
    c = cc()
    for k in range(3):
        answer_round(c, k * RTT)
    assert c.window == 32
    # RTT 10 ms -> 30 ms: 20 ms of queue is under the 25 ms target, the window still grows.
    answer_round(c, 0.1, rtt=0.03)
    assert c.window == 64
    # 10 ms -> 40 ms: 30 ms of queue for every latest sample, over the target.
    for i in range(4):
        c.on_answered(0.3 + i * 0.001, 0.26 + i * 0.001, 0.04, in_flight=64)
    assert c.window == 32 and c.stats["cc.reductions.delay"] == 1


def test_one_late_reply_is_no_queue() -> None:
    c = cc()
    for k in range(3):
        answer_round(c, k * RTT)
    c.on_answered(0.2, 0.1, 0.1, in_flight=32)  # a 100 ms hiccup among 10 ms samples
    assert c.stats["cc.signals.delay"] == 0 and c.window == 33


def test_random_loss_with_a_flat_rtt_never_shrinks_the_window() -> None:
    """Lost requests are simply never answered: the controller hears nothing about them."""
    c = cc(max_window=64)
    for k in range(40):
        for i in range(c.window):
            if (i * 7 + k) % 10 < 3:  # 30% of each round's answers never come
                continue
            c.on_answered(k * RTT + RTT, k * RTT, RTT, in_flight=c.window)
    assert c.window == 64 and not any(k.startswith("cc.reductions") for k in c.stats)


def test_after_the_first_reduction_a_slowdown_drains_the_queue_then_the_window_comes_back() -> None:
    c = cc()
    for k in range(3):
        answer_round(c, k * RTT)
    c.on_congestion(0.05, 0.045, MARK)  # the slowdown is due two RTTs later
    assert c.window == 16
    now = 0.05
    while c.slowdown_until is None:
        now += RTT
        answer_round(c, now)
    assert c.window == 2 and c.stats["cc.slowdowns"] == 1
    for k in range(12):
        answer_round(c, now + (k + 1) * RTT)
    assert c.slowdown_until is None and c.window >= 16


def test_config_is_checked() -> None:
    with pytest.raises(ValueError):
        CongestionConfig(initial_window=0)
    with pytest.raises(ValueError):
        CongestionConfig(beta=1.0)


# ---------------------------------------------------------------- the window in the session


def session_sim(max_window: int = 64, policy: RetryPolicy | None = None, **kw: object) -> Sim:
    controller = CongestionController(CongestionConfig(max_window=max_window))
    session = ClientSession(policy or RetryPolicy(), 0.0, congestion=controller)
    return Sim(session, QuoteServer(Catalog.from_prices(PRICES)), kw.pop("fate", steady(0.005, 0.005)), **kw)  # type: ignore[arg-type]


def test_requests_beyond_the_window_wait_in_the_session_and_go_out_as_answers_come() -> None:
    s = session_sim()
    for i in range(100):
        s.send(QuoteRequest(i + 1, "apple", i + 1))
    assert len(s.sent_at) == 4 and s.session.queued == 96 and s.session.in_flight == 4
    s.run(0.0101)  # the first round trip: 4 answers, each lets two go (slow start)
    assert len(s.sent_at) == 12
    s.run(5.0)
    assert all(isinstance(s.events[i + 1], Answered) for i in range(100))
    assert s.sent_at.count(0.0) == 4 and s.session.stats["retransmissions"] == 0


def test_without_a_controller_everything_goes_at_once() -> None:
    session = ClientSession(RetryPolicy(), 0.0)
    s = Sim(session, QuoteServer(Catalog.from_prices(PRICES)), steady())
    for i in range(100):
        s.send(QuoteRequest(i + 1, "apple", 1))
    assert len(s.sent_at) == 100 and session.queued == 0


def test_a_waiting_request_s_deadline_starts_when_it_is_sent() -> None:
    # Window 1 on a 0.6 s path with a 1 s deadline: the third request waits 1.2 s in the session,
    # longer than its deadline, and is still answered: its deadline ran from its transmission.
    policy = RetryPolicy(deadline_s=1.0, initial_timeout_s=2.0, max_timeout_s=2.0)
    s = session_sim(max_window=1, policy=policy, fate=steady(0.3, 0.3))
    for i in range(3):
        s.send(QuoteRequest(i + 1, "apple", 1))
    s.run(3.0)
    assert [type(s.events[i + 1]) for i in range(3)] == [Answered] * 3
    assert s.sent_at == pytest.approx([0.0, 0.6, 1.2])
    event = s.events[3]
    assert isinstance(event, Answered) and event.latency_s == pytest.approx(0.6)


def test_marked_replies_are_answers_and_shrink_the_window() -> None:
    s = session_sim(tamper=lambda data, n: mark_overloaded(data) if n >= 8 else data)
    for i in range(200):
        s.send(QuoteRequest(i + 1, "apple", (i % 9) + 1))
    s.run(10.0)
    for i in range(200):
        event = s.events[i + 1]
        assert isinstance(event, Answered) and isinstance(event.reply, Status) is False
        assert event.reply.status is Status.OK and event.reply.total == PRICES["apple"] * ((i % 9) + 1)  # type: ignore[union-attr]
    stats = s.session.stats
    assert stats["cc.signals.mark"] == 192 and stats["cc.reductions.mark"] >= 3
    assert s.session.congestion is not None and s.session.congestion.window < 8


def test_a_corrupted_datagram_with_the_flag_bit_is_not_repaired_into_a_reply() -> None:
    reply = QuoteServer(Catalog.from_prices(PRICES)).handle_datagram(
        encode_request(QuoteRequest(5, "apple", 2, transmission=1)), ("127.0.0.1", 40000), 0.0
    )
    assert reply is not None
    noisy = bytearray(reply)
    noisy[3] |= FLAG_OVERLOADED  # a bit flipped on the way: the seal no longer matches
    assert split_overload_mark(bytes(noisy)) == (bytes(noisy), False)
    assert split_overload_mark(mark_overloaded(reply)) == (reply, True)
    assert split_overload_mark(reply) == (reply, False)


def test_a_request_with_the_overloaded_flag_is_malformed_and_never_answered() -> None:
    server = QuoteServer(Catalog.from_prices(PRICES))
    data = bytearray(encode_request(QuoteRequest(5, "apple", 2, transmission=1)))
    data[3] |= FLAG_OVERLOADED
    body = bytes(data[:-4])
    flagged = body + zlib.crc32(body).to_bytes(4, "big")
    assert server.handle_datagram(flagged, ("127.0.0.1", 40000), 0.0) is None
    assert server.stats["refused.not_a_request"] == 1


# ---------------------------------------------------------------- where the server marks


def drain(sock: socket.socket, core: QuoteServer, marking: bool) -> tuple[int, int | None]:
    handled, drops, _ = loop._drain(sock, core, loop.Control(), lambda: 0.0, None, marking)
    return handled, drops


def timestamped(core: QuoteServer, sock: socket.socket) -> OverloadDetector:
    assert loop.reports_queueing_time(sock)
    return OverloadDetector(stats=core.stats, timestamps=True)


@pytest.mark.skipif(loop.SO_TIMESTAMPNS is None, reason="SO_TIMESTAMPNS is Linux-only")
def test_a_queue_whose_oldest_request_waited_100_ms_marks_the_replies_of_its_wake_up() -> None:
    server, client = pair_of_sockets()
    core = QuoteServer(Catalog.from_prices(PRICES))
    with server, client:
        detector = timestamped(core, server)
        send_quotes(client, READ_DROPS_BURST)  # a queue building: the next wake-up reads the timestamp
        assert wake_up(server, core, detector)[0] == READ_DROPS_BURST
        assert not any(split_overload_mark(r)[1] for r in replies(client))
        send_quotes(client, 10, first=100)
        queued = time.monotonic()
        while time.monotonic() < queued + 1.5 * detector.deep_wait_s:  # (the condition is the age itself)
            time.sleep(detector.deep_wait_s / 2)
        assert wake_up(server, core, detector)[0] == 10
        aged = replies(client)
        assert len(aged) == 10 and all(split_overload_mark(r)[1] for r in aged), "they waited: all marked"
        assert all(decode_any_reply(split_overload_mark(r)[0]).status is Status.OK for r in aged)
        assert core.stats["overload.deep_backlog"] == 1 and core.stats["overload.marked"] == 10
        send_quotes(client, 5, first=200)  # fresh: the queue was emptied by the wake-up before
        assert wake_up(server, core, detector)[0] == 5
        assert not any(split_overload_mark(r)[1] for r in replies(client))
        assert core.stats["overload.marked"] == 10 and core.stats["overload.deep_backlog"] == 1


@pytest.mark.skipif(loop.SO_TIMESTAMPNS is None, reason="SO_TIMESTAMPNS is Linux-only")
@pytest.mark.parametrize("before", [1, READ_DROPS_BURST])
def test_a_busy_server_with_a_fresh_queue_is_not_marked(before: int) -> None:
    """A full burst (DRAIN_LIMIT datagrams, the socket still not empty) of requests that had just
    arrived is a busy server, not a deep backlog: delay-based clients keep a short standing queue
    on purpose, so the server never idles, and must not be halved for it. After a light load the
    burst's first datagram is read without a timestamp (recvfrom): not marked either."""
    server, client = pair_of_sockets()
    core = QuoteServer(Catalog.from_prices(PRICES))
    with server, client:
        detector = timestamped(core, server)
        send_quotes(client, before)
        assert wake_up(server, core, detector)[0] == before
        got = replies(client)
        send_quotes(client, loop.DRAIN_LIMIT + 10, first=1000)
        assert wake_up(server, core, detector)[0] == loop.DRAIN_LIMIT
        got += replies(client)  # (read as they come: the client's own buffer is small)
        assert wake_up(server, core, detector)[0] == 10
        got += replies(client)
        assert len(got) == before + loop.DRAIN_LIMIT + 10
        assert not any(split_overload_mark(r)[1] for r in got) and core.stats["overload.deep_backlog"] == 0


def test_without_timestamps_a_full_burst_counts_as_a_deep_backlog() -> None:
    detector = OverloadDetector()
    detector.after_burst(DEEP_BACKLOG, None, 0.0)
    assert detector.overloaded(0.0) and detector.next_burst(0.0)[0]
    detector.after_burst(DEEP_BACKLOG - 1, None, 0.0)
    assert not detector.overloaded(0.0)
    with_timestamps = OverloadDetector(timestamps=True)
    with_timestamps.after_burst(DEEP_BACKLOG, None, 0.0)  # a socket with timestamps: the wait decides
    assert not with_timestamps.overloaded(0.0)


def test_a_wait_decides_a_deep_backlog_and_a_clock_step_is_no_queue() -> None:
    detector = OverloadDetector(timestamps=True)
    for waited in (None, 0.0, DEEP_WAIT_S - 0.001, -0.5, CLOCK_STEP_S, 3600.0):
        assert not detector.queue_waited(waited), waited
    assert detector.queue_waited(DEEP_WAIT_S) and detector.queue_waited(CLOCK_STEP_S - 0.001)
    assert detector.stats["overload.deep_backlog"] == 2


@pytest.mark.skipif(loop.SO_RXQ_OVFL is None, reason="SO_RXQ_OVFL is Linux-only")
def test_socket_drops_are_read_from_so_rxq_ovfl_and_mark_replies_for_a_while() -> None:
    server, client = pair_of_sockets(rcvbuf=4096)  # the kernel's minimum: a handful of datagrams
    core = QuoteServer(Catalog.from_prices(PRICES))
    detector = OverloadDetector(stats=core.stats)
    with server, client:
        send_quotes(client, 500)  # loopback delivers at once: most overflow the tiny queue
        handled, drops = drain(server, core, False)
        # The counter travels with each datagram as it was when the datagram was queued: the
        # ones queued before the overflow carry none, the next burst's first one carries it all.
        assert drops is None and 0 < handled < 500
        send_quotes(client, 1, first=1000)
        more, drops = drain(server, core, False)
        assert more == 1 and drops == 500 - handled
        detector.after_burst(handled, drops, 10.0)
        assert core.stats["overload.kernel_drops"] == drops
        assert detector.overloaded(10.0) and detector.overloaded(10.0 + 0.09)
        assert not detector.overloaded(10.0 + 0.11)  # held HOLD_S, then released


def test_a_source_near_its_rate_limit_gets_marked_replies() -> None:
    server, client = pair_of_sockets()
    core = QuoteServer(Catalog.from_prices(PRICES), limiter=RateLimiter(rate=1.0, burst=20.0))
    with server, client:
        send_quotes(client, 20)
        drain(server, core, False)
        got = replies(client)
        marked = [split_overload_mark(r)[1] for r in got]
        # 20 tokens; 10% of the burst is 2. Checked before each request pays its token (the clock
        # stands still, nothing refills): 20, 19, ... 2 are not near the limit, 1 is.
        assert len(got) == 20 and marked == [False] * 19 + [True]
        assert core.stats["overload.marked"] == 1


def test_the_drop_counter_is_read_when_a_queue_builds_and_now_and_then() -> None:
    detector = OverloadDetector()
    wants = []
    for _ in range(128):
        wants.append(detector.next_burst(0.0)[1])
        detector.after_burst(1, None, 0.0)  # a light load: one datagram per wake-up
    assert wants.count(True) == 2  # every 64th wake-up only: recvmsg costs more than recvfrom
    detector.after_burst(16, None, 0.0)
    assert detector.next_burst(0.0)[1]


# ---------------------------------------------------------------- the base delay can rise


def test_a_permanent_rise_of_the_base_rtt_is_accepted_within_seconds_not_read_as_queue() -> None:
    """A route change or an added proxy takes the path from 10 ms to 60 ms for good (a rise above
    the 25 ms target). Reading the whole 50 ms as queue forever pinned the window at 1-2; the
    base-delay history forgets the old minimum and the window comes back near the maximum."""
    c = cc(max_window=64)
    assert c.target() < 0.050
    before = closed_loop(c, 0.0, 0.010, 2.0)
    shifted_at = before[-1][0]
    assert max(w for _, w in before) == 64
    after = closed_loop(c, shifted_at, 0.060, 20.0)
    assert c.stats["cc.reductions.delay"] > 0, "the rise looks like a queue at first"
    pinned = next(i for i, (_, w) in enumerate(after) if w <= 2)
    recovered = next((t for t, w in after[pinned:] if w >= 58), None)
    assert recovered is not None and recovered - shifted_at <= 12.0, "the window came back within 12 s"
    late = [w for t, w in after if t >= shifted_at + 15.0]
    assert sum(late) / len(late) >= 0.9 * 64
    assert c.min_rtt == pytest.approx(0.060)


def test_the_base_rtt_still_falls_at_once_and_a_short_queue_does_not_become_the_base() -> None:
    c = cc()
    closed_loop(c, 0.0, 0.020, 2.0)
    assert c.min_rtt == pytest.approx(0.020)
    closed_loop(c, 2.0, 0.005, 0.5)
    assert c.min_rtt == pytest.approx(0.005), "a lower RTT is the new base at once"
    closed_loop(c, 2.6, 0.040, 2.0)  # 2 s of a higher RTT: shorter than the history
    assert c.min_rtt == pytest.approx(0.005)


def test_a_standing_queue_that_drains_in_the_slowdowns_never_becomes_the_base() -> None:
    """A queue of 35 ms (over the target) that drains whenever the sender slows down: the
    slowdowns keep measuring the base, so 20 s of it never become base delay."""
    c = cc()
    closed_loop(c, 0.0, 0.005, 2.0)
    closed_loop(c, 2.0, 0.005, 20.0, queue=0.035)
    assert c.stats["cc.slowdowns"] >= 5 and c.min_rtt == pytest.approx(0.005)
