"""The pure client session on scripted timelines: drops, delays, reorderings, ICMP at exact times.

Loss is injected by not delivering bytes (sessionsim.Sim); the server is the real pure core.
"""

from __future__ import annotations

import random
import zlib

import pytest
from helpers import expected_prices
from sessionsim import Fate, Sim, drop, pair, roundtrip, steady

from udp_price.catalog import Catalog
from udp_price.client.events import Answered, Failed
from udp_price.client.recovery import ReorderWindow, RetryBudget, RttEstimator
from udp_price.client.reply_checks import violation
from udp_price.client.retry import Outcome, RetryPolicy
from udp_price.client.session import ClientSession
from udp_price.server.core import QuoteServer
from udp_price.wire import (
    BatchReply,
    BatchRequest,
    LineResult,
    QuoteReply,
    QuoteRequest,
    Status,
    decode_any_reply,
    encode_batch_reply,
    encode_batch_request,
    encode_reply,
    lines_digest,
)
from wire_format import MAX_TOTAL

PRICES = expected_prices()
APPLE = PRICES["apple"]


def sim(fate: Fate | None = None, policy: RetryPolicy | None = None, **kw: object) -> Sim:
    session = ClientSession(policy or RetryPolicy(), 0.0)
    return Sim(session, QuoteServer(Catalog.from_prices(PRICES)), fate or steady(), **kw)  # type: ignore[arg-type]


def quotes(s: Sim, n: int, first_id: int = 1) -> None:
    for i in range(n):
        s.send(QuoteRequest(first_id + i, "apple", i + 1))


def all_exact(s: Sim, n: int, first_id: int = 1) -> None:
    assert not s.failed(), s.failed()[:3]
    for i in range(n):
        event = s.events[first_id + i]
        assert isinstance(event, Answered) and isinstance(event.reply, QuoteReply)
        assert (event.reply.status, event.reply.total) == (Status.OK, APPLE * (i + 1))


def drop_up(*indexes: int, delay: float = 0.001) -> Fate:
    return lambda d, i, now: [] if d == "up" and i in indexes else [delay]


# ---------------------------------------------------------------- RTT, RTO, RFC 6298


def test_clean_path_one_transmission_and_an_rtt_sample() -> None:
    s = sim(steady(0.01, 0.01))
    quotes(s, 1)
    s.run(1.0)
    all_exact(s, 1)
    assert s.sent_at == [0.0] and s.session.rtt.srtt == pytest.approx(0.02)


def test_lost_first_transmission_is_resent_at_the_rto_and_still_sampled() -> None:
    s = sim(drop_up(0, delay=0.01))
    quotes(s, 1)
    s.run(2.0)
    all_exact(s, 1)
    assert s.sent_at == [0.0, 0.25]  # initial RTO, no jitter
    # The reply echoes transmission 2, so it is an RTT sample despite the retransmission (no Karn).
    assert s.session.rtt.samples == 1 and s.session.rtt.srtt == pytest.approx(0.02)


def test_backed_off_rto_is_kept_for_the_next_request_until_a_sample() -> None:
    """RFC 6298 5.5: after a timeout the doubled RTO stays for new requests until a sample arrives."""
    s = sim(lambda d, i, now: [] if now < 0.3 else [0.001])
    quotes(s, 1)
    s.run(0.26)
    assert s.sent_at == [0.0, 0.25] and s.session.rtt.rto == pytest.approx(0.5)
    s.send(QuoteRequest(2, "apple", 2))  # a new request does not go back to 0.25
    s.run(0.7)
    assert s.sent_at == [0.0, 0.25, 0.26]
    s.run(5.0)
    all_exact(s, 2)
    assert s.session.rtt.backoff == 0 and s.session.rtt.rto < 0.5


@pytest.mark.parametrize("one_way", [0.2, 0.5])
def test_slow_path_costs_one_probe_per_rto_not_one_per_request(one_way: float) -> None:
    s = sim(steady(one_way, one_way))
    quotes(s, 64)
    s.run(30.0)
    all_exact(s, 64)
    retransmissions = len(s.sent_at) - 64
    assert 1 <= retransmissions <= 2, s.sent_at[64:]
    assert s.session.stats["spurious"] == retransmissions  # each was proven unneeded by the echo
    assert s.session.rtt.rto > 2 * one_way  # learned the slow path from the very first replies
    quotes(s, 64, first_id=1000)  # and from then on nothing is retransmitted
    s.run(60.0)
    assert len(s.sent_at) == 128 + retransmissions


def test_rto_floor_and_min_rtt() -> None:
    rtt = RttEstimator(initial_rto_s=0.25, min_rto_s=0.05)
    rtt.on_sample(0.0001)
    assert rtt.base_rto == 0.05 and rtt.min_rtt == 0.0001
    rtt = RttEstimator()
    rtt.on_sample(0.1)
    assert (rtt.srtt, rtt.rttvar) == (0.1, 0.05)  # RFC 6298 2.2
    rtt.on_sample(0.2)
    assert rtt.srtt == pytest.approx(0.1125) and rtt.rttvar == pytest.approx(0.0625)  # 2.3


# ---------------------------------------------------------------- RACK and the reorder window


def warm(s: Sim) -> None:
    """One clean exchange, then past the learning phase (the initial RTO after the first reply)."""
    s.send(QuoteRequest(10_000, "apple", 1))
    s.run(0.5)


def test_rack_resends_a_lost_request_once_later_ones_are_answered() -> None:
    s = sim(drop_up(1, delay=0.005))
    warm(s)
    quotes(s, 10)
    s.run(0.7)  # long before the 0.25 s RTO would fire
    all_exact(s, 10)
    assert s.session.stats["retransmissions.rack"] == 1 and len(s.sent_at) == 12


def test_reordering_grows_the_window_after_one_spurious_retransmission() -> None:
    late = {6, 26}  # these replies are held 100 ms: reordering, not loss

    def fate(d: str, i: int, now: float) -> list[float]:
        return [0.1] if d == "down" and i in late else [0.001]

    s = sim(fate)
    warm(s)
    quotes(s, 20)
    s.run(1.0)
    first = s.session.stats["retransmissions.rack"]
    assert first == 1 and s.session.stats["spurious"] == 1
    assert s.session.loss.reorder.window(s.session.rtt) >= 0.1
    quotes(s, 20, first_id=100)
    s.run(2.0)
    all_exact(s, 20, first_id=100)
    assert s.session.stats["retransmissions.rack"] == first, "the grown window covers the same reordering"


def test_reordering_seen_while_learning_costs_no_retransmission() -> None:
    """Before the session has watched the path for an initial RTO, RACK waits that long, and
    the late replies it sees set the reorder window directly."""
    s = sim(lambda d, i, now: [0.1] if d == "down" and i == 5 else [0.001])
    quotes(s, 20)
    s.run(1.0)
    all_exact(s, 20)
    assert s.session.stats["retransmissions.rack"] == 0 and s.session.loss.reorder.window(s.session.rtt) >= 0.1


def test_reorder_window_returns_to_its_start_after_16_clean_recoveries() -> None:
    rtt = RttEstimator()
    rtt.on_sample(0.04)
    w = ReorderWindow()
    assert w.window(rtt) == pytest.approx(0.01)  # min_RTT / 4
    w.on_spurious(0.08)
    assert w.window(rtt) == pytest.approx(0.1)  # the measured lateness, with a 25% margin
    for i in range(15):
        w.on_recovery(float(i), 0.04)
        w.on_recovery(i + 0.01, 0.04)  # within one SRTT of the last: the same recovery episode
    assert w.window(rtt) == pytest.approx(0.1)
    w.on_recovery(15.0, 0.04)
    assert w.window(rtt) == pytest.approx(0.05)  # halved
    for i in range(16, 16 * 8):
        w.on_recovery(float(i), 0.04)
    assert w.window(rtt) == pytest.approx(0.01)  # and faded back to min_RTT / 4


# ---------------------------------------------------------------- budget and giving up


def test_budget_delays_but_never_fails_a_request_on_a_live_path() -> None:
    rng = random.Random(3)
    s = sim(lambda d, i, now: [] if rng.random() < 0.3 else [0.002])
    quotes(s, 300)
    s.run(60.0)
    all_exact(s, 300)


def test_silent_server_all_fail_at_the_deadline_within_the_budget() -> None:
    s = sim(lambda d, i, now: [], RetryPolicy(deadline_s=10.0))
    s.session.keep_verdict = True
    quotes(s, 64)
    s.run(10.0)
    assert len(s.failed()) == 64 and {e.outcome for e in s.failed()} <= {Outcome.UNREACHABLE, Outcome.DEADLINE}
    assert len(s.sent_at) - 64 <= 0.2 * 64 + 10 * 10.0
    s.send(QuoteRequest(999, "apple", 1))  # the rest of a bulk file fails at once, unsent
    assert isinstance(s.events[999], Failed) and s.events[999].attempts == 0


def test_blackhole_for_two_seconds_then_everything_completes() -> None:
    s = sim(lambda d, i, now: [] if now < 2.0 else [0.001])
    quotes(s, 64)
    s.run(20.0)
    all_exact(s, 64)
    assert len(s.sent_at) - 64 <= 64 + 10, "one probe per RTO in the hole, then each lost request once"


def test_the_last_requests_of_a_run_escape_a_loss_burst_counted_in_datagrams() -> None:
    """The fault proxy's burst loss (a Gilbert-Elliott channel) lasts a number of datagrams, not
    seconds. When the last 16 requests of a run fall into a burst of 40 datagrams, nothing answers,
    so RACK cannot help; one probe per backed-off RTO (1 s at most) needed about 25 s to use up the
    burst and the 10 s deadline failed them (about 3 attempts each). Every overdue request goes
    out on each RTO, as if each had a timer of its own, and all are answered in time."""
    s = sim(lambda d, i, now: [] if d == "up" and 40 <= i < 80 else [0.001])
    quotes(s, 40)  # answered: the path is known
    s.run(1.0)
    quotes(s, 16, first_id=100)
    s.run(15.0)
    assert not s.failed(), [(e.outcome, e.attempts) for e in s.failed()][:4]
    assert len(s.answered()) == 56 and s.session.stats["timeouts"] <= 6
    # ...and each request at most once per RTO: 56 + 40 lost + the 16 that got through.
    assert len(s.sent_at) == 40 + 40 + 16


def test_a_server_that_answered_then_fell_silent_is_not_flooded() -> None:
    """Resending every overdue request per RTO is one datagram per request per backed-off RTO,
    within the retry budget, and the silence still fails everything at the deadline."""
    s = sim(lambda d, i, now: [] if d == "up" and i >= 10 else [0.001], RetryPolicy(deadline_s=10.0))
    quotes(s, 10)
    s.run(0.5)
    quotes(s, 64, first_id=100)
    s.run(12.0)
    assert len(s.failed()) == 64
    assert len(s.sent_at) - 74 <= 0.2 * 74 + 10 * 12.0 + 3 * 10, "the retry budget bounds it"


def test_retry_budget_is_a_rate() -> None:
    b = RetryBudget()
    b.start(0.0)
    assert not b.try_spend(0.05)
    assert b.try_spend(0.1)  # 10 per second
    for _ in range(10):
        b.on_request(0.1)
    assert b.try_spend(0.1) and b.try_spend(0.1) and not b.try_spend(0.1)  # 20% of requests
    b.on_reply(0.1)
    assert [b.try_spend(0.1) for _ in range(4)] == [True, True, True, False]  # a reply earns 3


# ---------------------------------------------------------------- ICMP, BUSY


def test_dead_port_fails_fast_after_the_grace() -> None:
    s = sim(down=[(0.0, 100.0)])
    quotes(s, 3)
    s.run(5.0)
    assert len(s.failed()) == 3 and {e.outcome for e in s.failed()} == {Outcome.REFUSED}
    assert all(e.elapsed_s <= 0.6 for e in s.failed())


def test_restart_after_answers_pauses_and_probes_then_completes() -> None:
    s = sim(down=[(1.0, 1.5)])
    quotes(s, 5)
    s.run(0.9)
    s.send(QuoteRequest(50, "apple", 1))
    s.run(1.01)  # request 50 was answered; now the server goes down
    for i in range(100, 164):
        s.send(QuoteRequest(i, "apple", 2))
    s.run(1.4)
    assert s.session.probing and len(s.sent_at) < 6 + 64 + 5, "paused: only probes while it is down"
    s.run(20.0)
    assert len(s.answered()) == 6 + 64 and not s.failed()


def test_busy_holds_the_retransmission_until_retry_after() -> None:
    s = sim()

    def busy_first(reply: bytes, n: int) -> bytes | None:
        r = decode_any_reply(reply)
        assert isinstance(r, QuoteReply)
        if n == 0:
            return encode_reply(QuoteReply(r.request_id, Status.BUSY, r.item, r.quantity, 0, 0, 1, 300, 1))
        return reply

    s.tamper = busy_first
    quotes(s, 1)
    s.run(5.0)
    all_exact(s, 1)
    assert s.sent_at[1] >= 0.3


def test_busy_replies_earn_no_retry_budget() -> None:
    """An overloaded server asks for less traffic: its BUSY replies must not pay for retransmissions."""
    s = sim()

    def always_busy(reply: bytes, n: int) -> bytes | None:
        r = decode_any_reply(reply)
        assert isinstance(r, QuoteReply)
        return encode_reply(QuoteReply(r.request_id, Status.BUSY, r.item, r.quantity, 0, 0, 1, 50, r.transmission))

    s.tamper = always_busy
    before = s.session.budget.tokens
    quotes(s, 1)
    s.run(0.002)
    assert s.session.stats["sent"] == 1 and s.session.budget.tokens <= before + 0.2 + 0.002 * 10 + 1e-9


@pytest.mark.parametrize("retries", [0, 2])
def test_out_of_attempts_still_waits_for_an_answer_until_the_deadline(retries: int) -> None:
    """0.3 s each way: the answer to the first transmission comes at 0.6 s, after every attempt has
    timed out; it is still an answer to a request whose deadline (10 s) has not passed."""
    s = sim(steady(0.3, 0.3), RetryPolicy(max_attempts=retries + 1))
    quotes(s, 1)
    s.run(11.0)
    all_exact(s, 1)


def test_attempts_spent_fast_under_heavy_loss_do_not_fail_before_the_deadline() -> None:
    """Every transmission of request 1 is lost but the last one's reply comes 3 s late (a queue on
    the path): the request is answered, not failed a moment after its last attempt."""
    policy = RetryPolicy(max_attempts=3)

    def fate(direction: str, index: int, now: float) -> list[float]:
        if direction == "up":
            return [0.001] if index == 2 else []
        return [3.0]

    s = sim(fate, policy)
    quotes(s, 1)
    s.run(11.0)
    all_exact(s, 1)


# ---------------------------------------------------------------- replies the client must not believe


def forged(total: int, status: Status = Status.OK, unit: int = APPLE, quantity: int = 1) -> bytes:
    return encode_reply(QuoteReply(1, status, "apple", quantity, unit, total, 1, transmission=1))


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        (forged(APPLE + 1), "total_not_price_times_quantity"),
        (forged(MAX_TOTAL + 1, unit=MAX_TOTAL + 1), "total_out_of_range"),
        (forged(0, Status.BAD_PAGE), "status_not_valid_for_kind"),
        (forged(0, Status.BAD_QUANTITY), "bad_quantity_for_good_quantity"),
        (forged(0, Status.OVERFLOW), "overflow_without_overflow"),
    ],
)
def test_lying_quote_replies_are_ignored_and_counted(reply: bytes, why: str) -> None:
    s = sim(lambda d, i, now: [0.001] if d == "up" else [], RetryPolicy(deadline_s=1.0))
    quotes(s, 1)
    s.session.datagram_received(reply, 0.01)
    s.run(2.0)
    assert s.session.stats[f"ignored.invalid.{why}"] == 1
    assert not s.answered() and isinstance(s.events[1], Failed)


def test_batch_replies_need_the_lines_digest_even_for_whole_batch_errors() -> None:
    request = BatchRequest(7, (("apple", 2), ("pear", 1)))
    digest = lines_digest(encode_batch_request(request))
    bad_error = BatchReply(7, Status.BUSY, 0, (), 1, 0, 1)
    assert violation(request, digest, bad_error) == "lines_digest_mismatch"
    good = (LineResult(Status.OK, APPLE, 2 * APPLE), LineResult(Status.OK, PRICES["pear"], PRICES["pear"]))
    assert violation(request, digest, BatchReply(7, Status.OK, digest, good, 1, 0, 1)) is None
    lie = (good[0], LineResult(Status.OK, PRICES["pear"], PRICES["pear"] + 1))
    assert (
        violation(request, digest, BatchReply(7, Status.OK, digest, lie, 1, 0, 1)) == "total_not_price_times_quantity"
    )
    encode_batch_reply(BatchReply(7, Status.BUSY, digest, (), 1, 0, 1))  # what the server sends is encodable


def test_a_malformed_answer_is_a_reason_to_resend_not_a_verdict() -> None:
    s = sim()
    s.tamper = lambda reply, n: (
        encode_reply(QuoteReply(1, Status.MALFORMED, "", 0, transmission=1)) if n == 0 else reply
    )
    quotes(s, 1)
    s.run(5.0)
    all_exact(s, 1)
    assert s.session.stats["nacks"] == 1


def test_a_server_of_another_version_is_an_explicit_failure() -> None:
    s = sim(lambda d, i, now: [0.001] if d == "up" else [])
    quotes(s, 1)
    body = bytearray(encode_reply(QuoteReply(1, Status.UNSUPPORTED_VERSION, "", 0))[:-4])
    body[2] = 1
    old = bytes(body) + zlib.crc32(body).to_bytes(4, "big")
    events = s.session.datagram_received(old, 0.01)
    assert len(events) == 1 and isinstance(events[0], Failed) and events[0].outcome is Outcome.VERSION


def test_corruption_never_yields_a_wrong_or_failed_row() -> None:
    rng = random.Random(11)

    def flip(reply: bytes, n: int) -> bytes | None:
        if rng.random() < 0.3:
            i = rng.randrange(len(reply))
            return reply[:i] + bytes([reply[i] ^ (1 << rng.randrange(8))]) + reply[i + 1 :]
        return reply

    s = sim()
    s.tamper = flip
    quotes(s, 200)
    s.run(60.0)
    all_exact(s, 200)


def test_scripted_drops_with_the_in_memory_pair() -> None:
    # aioquic-style: the first two transmissions are lost on the way up, the third gets through.
    session, server = pair(PRICES)
    assert session.send(QuoteRequest(7, "apple", 3), 0.0) == []
    assert drop(session) == 1
    now, lost = 0.0, 1
    while lost < 3:
        timer = session.timer()
        assert timer is not None and timer > now, "a lost request must keep a retransmission timer"
        now = timer
        assert session.handle_timer(now) == []
        if lost < 2:
            assert drop(session) == 1
        lost += 1
    up, down, events = roundtrip(session, server, now)
    assert (up, down) == (1, 1)
    (answer,) = events
    assert isinstance(answer, Answered) and answer.attempts == 3
    assert isinstance(answer.reply, QuoteReply) and answer.reply.total == 3 * PRICES["apple"]
    assert answer.reply.transmission == 3
    assert session.pending == 0
