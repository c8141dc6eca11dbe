"""Tests written to kill mutants that survived scripts/mutate.sh in the client's retry logic: the
retry budget, loss detection and the RTT estimator, each value asserted exactly."""

from __future__ import annotations

from typing import Any

import pytest

from udp_price.client.loss_detection import LossDetection, Transmissions
from udp_price.client.recovery import MAX_BACKED_OFF_RTO_S, ReorderWindow, RetryBudget, RttEstimator
from udp_price.client.retry import RetryPolicy


def test_retry_budget_next_token() -> None:
    budget = RetryBudget(per_second=10.0)
    budget.start(5.0)
    assert budget.next_token_at() == pytest.approx(5.1)
    budget.on_request(5.0)  # 0.2 of a token
    assert budget.next_token_at() == pytest.approx(5.08)
    budget.on_reply(5.0)
    assert budget.next_token_at() == 5.0, "a whole token in hand: now"
    assert RetryBudget(per_second=0.0).next_token_at() == 3600.0
    assert RetryBudget(per_second=0.5).next_token_at() == 2.0
    assert budget.try_spend(5.0) and budget.spent == 1
    budget.refund()
    assert budget.tokens == pytest.approx(3.2)
    full = RetryBudget(cap=2.0, tokens=2.0)
    full.refund()
    assert full.tokens == 2.0, "refunds stop at the cap"


# ---------------------------------------------------------------- the retry policy's settings


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_attempts": 0}, "max_attempts must be at least 1"),
        ({"initial_timeout_s": 0.0}, "timeouts must be positive"),
        ({"min_timeout_s": 0.0}, "timeouts must be positive"),
        ({"min_timeout_s": 0.5, "max_timeout_s": 0.25}, "max_timeout_s must be >= min_timeout_s"),
        ({"deadline_s": 0.0}, "deadline_s must be positive or None"),
    ],
)
def test_retry_policy_refuses_nonsense_by_name(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        RetryPolicy(**settings)


def test_retry_policy_at_its_limits_is_accepted() -> None:
    tiny = 1e-9
    policy = RetryPolicy(max_attempts=1, initial_timeout_s=tiny, min_timeout_s=tiny, max_timeout_s=tiny)
    assert (policy.max_attempts, policy.max_timeout_s) == (1, tiny)
    assert RetryPolicy(deadline_s=None).deadline_s is None
    assert RetryPolicy(deadline_s=tiny).deadline_s == tiny


# ---------------------------------------------------------------- the RTT estimator (RFC 6298)


def test_rtt_estimator_first_and_later_samples() -> None:
    rtt = RttEstimator()
    assert (rtt.base_rto, rtt.rto) == (0.25, 0.25), "the initial RTO before any sample"
    rtt.on_sample(0.25)
    assert (rtt.srtt, rtt.rttvar, rtt.min_rtt, rtt.latest_rtt, rtt.samples) == (0.25, 0.125, 0.25, 0.25, 1)
    assert rtt.base_rto == 0.75, "SRTT + 4 RTTVAR"
    rtt.on_sample(0.5)
    assert rtt.srtt == 0.25 * 7 / 8 + 0.5 / 8
    assert rtt.rttvar == 0.125 * 3 / 4 + 0.25 / 4
    assert (rtt.min_rtt, rtt.latest_rtt, rtt.samples) == (0.25, 0.5, 2)
    rtt.on_sample(0.125)
    assert (rtt.min_rtt, rtt.latest_rtt) == (0.125, 0.125)


@pytest.mark.parametrize(("per_rtt", "n"), [(0, 1), (1, 1), (2, 2), (4, 4)])
def test_rtt_gains_are_divided_by_the_samples_per_round_trip(per_rtt: int, n: int) -> None:
    rtt = RttEstimator()
    rtt.on_sample(0.25)
    rtt.on_sample(0.5, per_rtt)
    assert rtt.srtt == (1 - 1 / (8 * n)) * 0.25 + 0.5 / (8 * n)
    assert rtt.rttvar == (1 - 1 / (4 * n)) * 0.125 + 0.25 / (4 * n)


def test_rtt_estimator_floors_and_ceilings() -> None:
    negative = RttEstimator()
    negative.on_sample(-1.0)
    assert (negative.latest_rtt, negative.min_rtt, negative.srtt) == (0.0, 0.0, 0.0), "a clock step is no sample"
    assert negative.base_rto == 0.05, "floored at min_rto_s"
    assert RttEstimator(min_rto_s=0.0, initial_rto_s=1.0).base_rto == 1.0
    zero = RttEstimator(min_rto_s=0.0)
    zero.on_sample(0.0)
    assert zero.base_rto == 0.001, "SRTT + the clock granularity when RTTVAR is 0"
    assert RttEstimator(initial_rto_s=0.01, min_rto_s=0.05).base_rto == 0.05
    assert RttEstimator(initial_rto_s=40.0, backoff=1).rto == MAX_BACKED_OFF_RTO_S
    assert RttEstimator(initial_rto_s=70.0, backoff=1).rto == 70.0, "a measured RTO above the ceiling wins"
    assert RttEstimator(initial_rto_s=20.0, backoff=1).rto == 40.0


def test_rtt_backoff_doubles_up_to_the_cap_and_a_sample_resets_it() -> None:
    rtt = RttEstimator()
    rtts = []
    for _ in range(4):
        rtt.on_timeout(1.0)
        rtts.append((rtt.backoff, rtt.rto))
    assert rtts == [(1, 0.5), (2, 1.0), (2, 1.0), (2, 1.0)], "doubled while it stays within the 1 s cap"
    rtt.on_sample(0.25)
    assert rtt.backoff == 0
    slow = RttEstimator(initial_rto_s=2.0)
    slow.on_timeout(1.0)
    assert (slow.backoff, slow.rto) == (0, 2.0), "a cap below the base RTO: no backoff, no shrinking"


# ---------------------------------------------------------------- RACK's reorder window (RFC 8985)


def test_reorder_window_size() -> None:
    window = ReorderWindow()
    assert window.window(RttEstimator()) == 0.001, "no min_RTT yet: the floor"
    rtt = RttEstimator()
    rtt.on_sample(0.25)  # min_RTT 0.25, RTO 0.75
    assert window.window(rtt) == 0.0625, "min_RTT / 4"
    window.on_spurious(0.25)
    assert (window.extent_s, window.recoveries_left) == (0.25, 16)
    assert window.window(rtt) == 0.3125, "the lateness seen, with a margin of 1.25"
    window.on_spurious(0.125)
    assert window.extent_s == 0.25, "the largest lateness is kept"
    window.on_spurious(2.0)
    assert window.window(rtt) == 1.5, "at most two RTOs"


def test_reorder_window_halves_after_persist_recovery_episodes() -> None:
    window = ReorderWindow(persist=2)
    window.on_spurious(0.25)
    window.on_recovery(1.0, 0.5)
    assert (window.recoveries_left, window.last_recovery_at, window.extent_s) == (1, 1.0, 0.25)
    window.on_recovery(1.25, 0.5)
    assert (window.recoveries_left, window.last_recovery_at) == (1, 1.0), "within one RTO: the same episode"
    window.on_recovery(1.5, 0.5)
    assert (window.recoveries_left, window.extent_s) == (2, 0.125), "halved, and counted down again"
    fading = ReorderWindow(persist=1, extent_s=0.002, recoveries_left=1)
    fading.on_recovery(0.0, 0.5)
    assert (fading.extent_s, fading.recoveries_left) == (0.001, 0), "down to a millisecond: stop counting"
    fading.on_recovery(1.0, 0.5)
    assert (fading.extent_s, fading.recoveries_left, fading.last_recovery_at) == (0.001, 0, 1.0)


# ---------------------------------------------------------------- the retry budget's accrual


def test_retry_budget_accrues_only_forward_in_time() -> None:
    budget = RetryBudget(per_second=10.0, ratio=0.25)
    budget.on_request(5.0)
    assert (budget.tokens, budget.clock) == (0.25, 5.0), "no clock yet: nothing accrued before the first call"
    budget.on_request(4.0)
    assert (budget.tokens, budget.clock) == (0.5, 5.0), "time going backwards accrues nothing"
    budget.on_reply(5.5)
    assert (budget.tokens, budget.clock) == (8.5, 5.5), "5 per half second, 3 per reply"
    capped = RetryBudget(cap=2.0)
    capped.start(0.0)
    capped.on_reply(100.0)
    assert capped.tokens == 2.0
    capped.on_request(200.0)
    assert capped.tokens == 2.0


def test_retry_budget_spends_whole_tokens() -> None:
    budget = RetryBudget(tokens=1.5)
    budget.start(0.0)
    assert budget.try_spend(0.0) and (budget.tokens, budget.spent, budget.denied) == (0.5, 1, 0)
    assert not budget.try_spend(0.0) and (budget.tokens, budget.spent, budget.denied) == (0.5, 1, 1)
    assert budget.try_spend(0.05) and budget.tokens == pytest.approx(0.0), "10 tokens a second: half a token"
    almost = RetryBudget(tokens=1.0 - 1e-10)
    assert almost.try_spend(0.0), "rounding error is no missing token"
    short = RetryBudget(tokens=1.0 - 1e-6)
    assert not short.try_spend(0.0)


# ---------------------------------------------------------------- loss detection: RACK and the RTO timer
# Times are multiples of 1/2^k so every sum below is exact in binary floating point.


def detector() -> LossDetection:
    return LossDetection(RttEstimator(initial_rto_s=0.5), initial_rto_s=0.5, backoff_cap_s=4.0, now=0.0)


def sent(*times: float, why: tuple[str, ...] = ()) -> Transmissions:
    return Transmissions(list(times), list(why or ("first",) + ("rto",) * (len(times) - 1)))


def test_replies_are_rtt_samples_unless_ambiguous() -> None:
    ld = detector()
    assert not ld.on_reply(sent(0.0, 0.5), 0, 0.75, 1, True), "unnumbered and retransmitted (Karn)"
    assert ld.rtt.samples == 0 and not ld.learned(10.0)
    assert not ld.on_reply(sent(0.0), 0, 0.25, 1, True), "unnumbered but sent once: a sample"
    assert (ld.rtt.samples, ld.rtt.latest_rtt) == (1, 0.25)
    assert not ld.learned(0.625) and ld.learned(0.75), "watched for one initial RTO after the first reply"
    twice = sent(0.0, 0.5)
    assert not ld.on_reply(twice, 2, 0.875, 1, True), "the last transmission answered: nothing spurious"
    assert ld.rtt.latest_rtt == 0.375, "timed from the transmission it echoes"


def test_learning_counts_late_samples_as_reordering() -> None:
    ld = detector()
    ld.on_reply(sent(0.0), 1, 0.25, 1, True)
    ld.on_reply(sent(0.0), 1, 0.625, 1, True)
    assert (ld.reorder.extent_s, ld.reorder.recoveries_left) == (0.375, 16), "0.375 s beyond min_RTT"
    ld.on_reply(sent(0.0), 1, 0.75, 1, True)
    assert ld.reorder.extent_s == 0.375, "learning is over at 0.75"


def test_a_reply_to_an_earlier_transmission_proves_the_resend_spurious() -> None:
    ld = detector()
    ld.on_reply(sent(0.0), 1, 0.25, 1, True)  # min_RTT 0.25, learning over at 0.75
    by_rack = sent(1.0, 1.5, why=("first", "rack"))
    assert ld.on_reply(by_rack, 1, 2.0, 1, False)
    assert ld.reorder.extent_s == 0.75, "RACK resent too early: 1 s sample, 0.25 s expected"
    assert not ld.on_reply(by_rack, 1, 2.5, 1, False), "once per transmission"
    by_rto = sent(1.0, 1.5)
    assert ld.on_reply(by_rto, 1, 2.5, 1, False)
    assert ld.reorder.extent_s == 0.75, "an RTO resend proven spurious says nothing about reordering"
    assert not ld.on_reply(sent(1.0), 1, 2.5, 1, False), "a request sent once has nothing to prove spurious"


def test_only_a_pending_request_moves_racks_reference_point() -> None:
    ld = detector()
    ld.on_reply(sent(0.0), 1, 0.25, 1, True)
    ld.on_sent(7, sent(0.5))
    ld.on_reply(sent(1.0), 1, 1.25, 1, False)  # a late reply to a finished request
    assert ld.detect(5.0, False) == [], "nothing newer than request 7 was answered while pending"
    ld.on_reply(sent(1.0), 1, 1.25, 1, True)
    assert ld.detect(5.0, False) == [7]


def test_rack_declares_loss_one_rtt_and_a_window_after_a_newer_reply() -> None:
    ld = detector()
    for rid, at in ((1, 0.0), (2, 0.125), (3, 0.25)):
        ld.on_sent(rid, sent(at))
    two = ld.in_flight[2]
    ld.forget(2)
    ld.on_reply(two, 1, 0.375, 3, True)  # SRTT 0.25, RTTVAR 0.125, RTO 0.75; learning until 0.875
    assert ld.detect(0.4375, False) == [] and ld.reorder_at == 0.5, "while learning: at least the initial RTO"
    assert ld.timers() == [0.5, 0.75]
    assert ld.detect(0.5, False) == [1] and ld.reorder_at is None
    assert list(ld.in_flight) == [3], "request 3 went out after the answered one"
    ld.on_sent(4, sent(0.0, 0.5, why=("first", "rack")))
    ld.on_sent(5, sent(0.625))
    five = ld.in_flight.pop(5)
    ld.on_reply(five, 1, 0.875, 1, True)  # RTTVAR 0.09375, RTO 0.625; learned
    # wait = max(0.25, 9/8 x 0.25) + min_RTT / 4 = 0.34375; request 4 was resent by RACK once: doubled,
    # capped at the RTO (0.625).
    assert ld.detect(0.875, False) == [3] and ld.reorder_at == 1.125
    assert ld.detect(1.0, True) == [] and ld.reorder_at is None, "paused: nothing declared, no timer"
    ld.on_busy(1.0, 0.0)
    assert ld.busy_until == 1.625, "a BUSY reply silences RACK for at least an RTO"
    ld.on_busy(0.5, 2.0)
    assert ld.busy_until == 2.5
    ld.on_busy(0.0, 1.0)
    assert ld.busy_until == 2.5, "never shortened"
    assert ld.detect(2.375, False) == []
    assert ld.detect(2.5, False) == [4]


def test_the_rto_resends_the_oldest_and_while_answered_every_stale_one() -> None:
    quiet = detector()
    assert quiet.on_rto(10.0, True) == [] and quiet.timers() == []
    for ld in (quiet, detector()):
        for rid, at in ((1, 0.0), (2, 0.25), (3, 1.0), (4, 1.5)):
            ld.on_sent(rid, sent(at))
    assert quiet.timers() == [0.5]
    assert quiet.on_rto(0.4375, True) == []
    assert quiet.on_rto(0.5, False) == [1] and quiet.rtt.rto == 1.0, "backed off once"
    assert quiet.timers() == [1.5], "restarted when it fired"
    never_heard = detector()  # no RTT sample yet: a server never heard from gets one probe
    for rid, at in ((1, 0.0), (2, 0.25), (3, 1.0), (4, 1.5)):
        never_heard.on_sent(rid, sent(at))
    assert never_heard.on_rto(2.0, True) == [1]
    talking = detector()
    talking.rtt.on_sample(0.125)  # answered once: RTO 0.125 + 4 * 0.0625 = 0.375 s
    for rid, at in ((1, 0.0), (2, 0.25), (3, 1.0), (4, 1.5)):
        talking.on_sent(rid, sent(at))
    assert talking.on_rto(2.0, True) == [1, 2, 3], "sent at least the backed-off RTO (0.75 s) ago"
    assert list(talking.in_flight) == [4] and talking.timers() == [2.75]


def test_a_recovery_counts_when_the_last_transmission_was_answered() -> None:
    ld = detector()
    ld.reorder.on_spurious(0.25)
    ld.on_recovered(sent(0.0, 0.5), 1)
    ld.on_recovered(sent(0.0), 1)
    assert (ld.reorder.recoveries_left, ld.reorder.last_recovery_at) == (16, float("-inf"))
    ld.on_recovered(sent(0.0, 0.5), 2)
    assert (ld.reorder.recoveries_left, ld.reorder.last_recovery_at) == (15, 0.5)


def test_later_samples_have_their_gains_divided_by_the_requests_in_flight() -> None:
    ld = detector()
    ld.on_reply(sent(0.0), 1, 0.25, 1, True)  # SRTT 0.25, RTTVAR 0.125
    ld.on_reply(sent(1.0), 1, 1.5, 2, True)  # two per round trip: gains 1/16 and 1/8
    assert (ld.rtt.srtt, ld.rtt.rttvar) == (0.265625, 0.140625)


def test_racks_reference_point_is_the_transmission_the_reply_echoes() -> None:
    ld = detector()
    ld.on_sent(7, sent(0.25))
    ld.on_reply(sent(0.0, 0.5), 2, 0.75, 1, True)  # answers the resend of 0.5, not the first send
    assert ld.detect(5.0, False) == [7], "request 7 went out before the answered transmission"


def test_a_zero_min_rtt_is_a_measurement_not_an_unknown() -> None:
    ld = detector()
    ld.on_reply(sent(0.0), 1, 0.0, 1, True)  # answered within the clock's resolution
    assert ld.on_reply(sent(1.0, 1.5, why=("first", "rack")), 1, 2.0, 1, False)
    assert ld.reorder.extent_s == 1.0, "1 s late against a 0 s min_RTT"


def test_only_the_first_reply_after_a_timeout_restarts_the_timer() -> None:
    ld = detector()
    for rid in (1, 2, 3):
        ld.on_sent(rid, sent(0.0))
    assert ld.on_rto(0.5, False) == [1]
    ld.on_reply(sent(0.0), 1, 0.75, 1, True)
    assert ld.rto_at() == 0.75 + ld.rtt.rto, "restarted by the first answer after the timeout"
    ld.on_reply(sent(0.5), 1, 1.0, 1, True)
    assert ld.rto_at() == 0.75 + ld.rtt.rto == 2.84375, "a second answer does not restart it again"


def test_each_rack_resend_of_a_request_waits_twice_as_long() -> None:
    ld = LossDetection(RttEstimator(), initial_rto_s=0.25, backoff_cap_s=4.0, now=0.0)
    ld.on_sent(3, sent(0.5))
    ld.on_sent(4, sent(0.0, 0.5, why=("first", "rack")))
    ld.on_reply(sent(0.5), 1, 0.75, 1, True)  # SRTT 0.25, RTO 0.75, learned from 1.0
    # wait = max(0.25, 9/8 x 0.25) + min_RTT / 4 = 0.34375: request 3 is lost at 0.5 + 0.34375;
    # request 4's wait is doubled for its earlier RACK resend (0.6875, below the RTO): lost at 1.1875.
    assert ld.detect(0.8125, False) == [] and ld.reorder_at == 0.84375, "the earliest of the two"
    assert ld.detect(0.84375, False) == [3] and ld.reorder_at == 1.1875
    assert ld.detect(1.125, False) == [] and ld.reorder_at == 1.1875
    assert ld.detect(1.1875, False) == [4]


def test_a_zero_srtt_makes_rack_wait_only_the_window() -> None:
    ld = detector()
    ld.on_sent(7, sent(0.0))
    ld.on_reply(sent(0.0), 1, 0.0, 1, True)  # SRTT 0: wait = 0 + the 1 ms floor of the window
    assert ld.detect(0.5, False) == [7], "lost once learning (the initial RTO, 0.5 s) is over"


def test_a_recovery_is_timed_by_the_last_of_several_transmissions() -> None:
    ld = detector()
    ld.reorder.on_spurious(0.25)
    ld.on_recovered(sent(0.0, 0.5, 1.0), 3)
    assert (ld.reorder.recoveries_left, ld.reorder.last_recovery_at) == (15, 1.0)


def test_in_silence_the_rto_resends_every_request_whose_own_timer_expired() -> None:
    ld = detector()
    ld.rtt.on_sample(0.125)  # RTO 0.375 before this timeout's backoff
    for rid, at in ((1, 0.0), (2, 0.25), (3, 1.625), (4, 1.75)):
        ld.on_sent(rid, sent(at))
    assert ld.on_rto(2.0, False) == [1, 2, 3], "sent at most 0.375 s before 2.0 (3 exactly then)"
    assert list(ld.in_flight) == [4]


def test_in_silence_with_many_in_flight_the_rto_sends_only_probes() -> None:
    ld = detector()
    ld.rtt.on_sample(0.125)
    for rid in range(1, 18):  # 17 in flight: more than TAIL_REQUESTS
        ld.on_sent(rid, sent(0.0))
    assert ld.on_rto(2.0, False) == [1, 2], "PTO_PROBES of them"
    assert len(ld.in_flight) == 15
    tail = detector()
    tail.rtt.on_sample(0.125)
    for rid in range(1, 17):  # exactly TAIL_REQUESTS: every overdue one
        tail.on_sent(rid, sent(0.0))
    assert tail.on_rto(2.0, False) == list(range(1, 17))


def test_backoff_stops_at_the_last_doubling_within_the_cap() -> None:
    rtt = RttEstimator()  # base RTO 0.25
    for _ in range(3):
        rtt.on_timeout(1.5)
    assert (rtt.backoff, rtt.rto) == (2, 1.0), "0.5, 1.0; 2.0 would pass the 1.5 s cap"


def test_the_budget_counts_every_spend_and_every_denial() -> None:
    budget = RetryBudget(tokens=2.0)
    budget.start(0.0)
    assert [budget.try_spend(0.0) for _ in range(5)] == [True, True, False, False, False]
    assert (budget.spent, budget.denied) == (2, 3)
