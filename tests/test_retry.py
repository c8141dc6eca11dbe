"""The pure retry core on scripted timelines: loss is injected by not delivering bytes."""

from __future__ import annotations

import random

import pytest

from retry import Exchange, Outcome, RetryPolicy, RttEstimator

NO_JITTER = RetryPolicy(
    initial_timeout_s=0.5, max_attempts=4, deadline_s=None, random_factor=1.0, min_timeout_s=0.01, max_timeout_s=3.0
)


def run_silent(ex: Exchange, limit: int = 20) -> list[float]:
    """Deliver nothing; return the times at which the exchange (re)transmitted."""
    ex.start(0.0)
    sends = [0.0]
    for _ in range(limit):
        if ex.done:
            break
        now = ex.wake_at
        if ex.on_timer(now):
            sends.append(now)
    return sends


def test_backoff_doubles_and_gives_up_after_max_attempts() -> None:
    ex = Exchange(NO_JITTER, RttEstimator(initial_rto_s=0.5), random.Random(1))
    assert run_silent(ex) == [0.0, 0.5, 1.5, 3.5]
    assert ex.outcome is Outcome.TIMED_OUT
    assert ex.attempts == 4


def test_timeout_is_capped() -> None:
    policy = RetryPolicy(initial_timeout_s=1.0, max_attempts=5, deadline_s=None, random_factor=1.0, max_timeout_s=1.5)
    ex = Exchange(policy, RttEstimator(initial_rto_s=1.0), random.Random(1))
    assert run_silent(ex) == [0.0, 1.0, 2.5, 4.0, 5.5]


def test_deadline_cuts_the_last_attempt_short() -> None:
    policy = RetryPolicy(initial_timeout_s=0.5, max_attempts=10, deadline_s=2.0, random_factor=1.0, max_timeout_s=3)
    ex = Exchange(policy, RttEstimator(initial_rto_s=0.5), random.Random(1))
    assert run_silent(ex) == [0.0, 0.5, 1.5]
    assert ex.outcome is Outcome.DEADLINE
    assert ex.wake_at == 2.0


def test_first_timeout_is_randomised_like_coap() -> None:
    policy = RetryPolicy(initial_timeout_s=1.0, random_factor=1.5, max_timeout_s=5.0)
    waits = []
    for seed in range(200):
        ex = Exchange(policy, RttEstimator(initial_rto_s=1.0), random.Random(seed))
        ex.start(0.0)
        waits.append(ex.wake_at)
    assert all(1.0 <= w <= 1.5 for w in waits)
    assert max(waits) - min(waits) > 0.3, "jitter must spread clients out"


def test_reply_after_one_loss_completes_on_second_attempt() -> None:
    rtt = RttEstimator(initial_rto_s=0.5)
    ex = Exchange(NO_JITTER, rtt, random.Random(1))
    ex.start(0.0)
    assert not ex.on_timer(0.49), "no retransmission before the timer fires"
    assert ex.on_timer(0.5)
    ex.on_answer(0.52)
    assert ex.outcome is Outcome.ANSWERED and ex.attempts == 2
    assert rtt.samples == 0, "Karn: a retransmitted request gives no RTT sample"
    assert not ex.on_timer(10.0), "a finished exchange never retransmits"


def test_rtt_sample_from_single_attempt_adapts_timeout() -> None:
    rtt = RttEstimator(initial_rto_s=0.5)
    for _ in range(20):
        ex = Exchange(NO_JITTER, rtt, random.Random(1))
        ex.start(0.0)
        ex.on_answer(0.02)
    assert rtt.srtt == pytest.approx(0.02)
    assert rtt.rto < 0.05
    ex = Exchange(NO_JITTER, rtt, random.Random(1))
    ex.start(100.0)
    assert ex.wake_at - 100.0 == pytest.approx(max(rtt.rto, NO_JITTER.min_timeout_s))


def test_rfc6298_first_sample_and_update() -> None:
    rtt = RttEstimator()
    rtt.on_sample(0.1)
    assert (rtt.srtt, rtt.rttvar) == (0.1, 0.05)
    assert rtt.rto == pytest.approx(0.1 + 4 * 0.05)
    rtt.on_sample(0.3)
    assert rtt.rttvar == pytest.approx(0.75 * 0.05 + 0.25 * 0.2)
    assert rtt.srtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.3)


def test_min_timeout_floor_applies_to_tiny_rtts() -> None:
    rtt = RttEstimator()
    rtt.on_sample(0.00005)
    ex = Exchange(RetryPolicy(min_timeout_s=0.05, random_factor=1.0), rtt, random.Random(1))
    ex.start(0.0)
    assert ex.wake_at == pytest.approx(0.05)


def test_measured_rto_above_the_cap_wins() -> None:
    rtt = RttEstimator()
    rtt.on_sample(0.8)  # a slow path: rto = 0.8 + 4 * 0.4
    policy = RetryPolicy(max_timeout_s=0.5, random_factor=1.0, deadline_s=None, max_attempts=3)
    ex = Exchange(policy, rtt, random.Random(1))
    assert run_silent(ex) == pytest.approx([0.0, 2.4, 4.8])


def test_default_policy_survives_heavy_loss_on_paper() -> None:
    # Why max_attempts is 20: 30% loss each way loses 51% of round trips.
    policy = RetryPolicy()
    assert 0.51**policy.max_attempts < 2e-6
    rtt = RttEstimator()
    rtt.on_sample(0.001)  # a LAN or loopback path, once measured
    ex = Exchange(policy, rtt, random.Random(3))
    sends = run_silent(ex, limit=50)
    assert len(sends) == policy.max_attempts, "all attempts fit in the default deadline"
    assert policy.deadline_s is not None and sends[-1] < policy.deadline_s


def test_busy_holds_retransmission_until_retry_after() -> None:
    ex = Exchange(NO_JITTER, RttEstimator(initial_rto_s=0.5), random.Random(1))
    ex.start(0.0)
    ex.on_busy(0.1, 2.0)
    assert ex.wake_at == pytest.approx(2.1)
    assert not ex.on_timer(0.5)
    assert ex.on_timer(2.1)
    assert ex.attempts == 2


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(deadline_s=0)
    with pytest.raises(ValueError):
        RetryPolicy(min_timeout_s=1.0, max_timeout_s=0.5)


def test_loss_detection_retransmits_early_within_limits() -> None:
    policy = RetryPolicy(initial_timeout_s=1.0, max_attempts=2, deadline_s=5.0, random_factor=1.0)
    ex = Exchange(policy, RttEstimator(initial_rto_s=1.0), random.Random(1))
    ex.start(0.0)
    assert ex.on_loss_detected(0.01) and ex.attempts == 2 and ex.sent_at == 0.01
    assert not ex.on_loss_detected(0.02), "max_attempts holds for early retransmissions too"
    late = Exchange(policy, RttEstimator(initial_rto_s=1.0), random.Random(1))
    late.start(0.0)
    late.on_busy(0.0, 0.5)
    assert not late.on_loss_detected(0.1), "BUSY's retry-after holds too"


def test_reorder_window_is_a_quarter_of_min_rtt() -> None:
    rtt = RttEstimator()
    assert rtt.reorder_window == 0.001
    rtt.on_sample(0.04)
    rtt.on_sample(0.02)
    assert rtt.min_rtt == 0.02 and rtt.reorder_window == pytest.approx(0.005)
