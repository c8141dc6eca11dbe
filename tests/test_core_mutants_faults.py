"""Tests written to kill mutants that survived scripts/mutate.sh in the fault proxy's plan: link
shaping, the loss models' steps, the settings it refuses and the tags of delivered datagrams."""

from __future__ import annotations

from typing import Any

import pytest

from udp_price.faults.plan import (
    ChannelState,
    Direction,
    FaultPlan,
    Faults,
    LinkState,
    _rng_for,
    decide_step,
    gemodel_step,
    gilbert_step,
    shape,
)

# ---------------------------------------------------------------- the proxy's link shaping

DATA = bytes(range(76))


def test_shape_delay_rate_and_limit() -> None:
    idle = LinkState()
    assert shape(idle, 1.0, 100, 0.0, 0.0, 0) == (0.0, LinkState(0.0, ()))
    delay, held = shape(idle, 1.0, 100, 0.25, 0.0, 0)
    assert (delay, held) == (0.25, LinkState(0.0, (1.25,)))
    assert shape(held, 1.0, 100, 0.25, 0.0, 1) == (None, LinkState(0.0, (1.25,))), "limit 1, one held: tail drop"
    delay, two = shape(held, 1.1, 100, 0.05, 0.0, 2)
    assert delay == pytest.approx(0.05) and two.departures == pytest.approx((1.15, 1.25)), "kept in departure order"
    assert shape(two, 1.3, 100, 0.0, 0.0, 1)[0] == 0.0, "departed ones no longer count against the limit"
    # 8,000 bit/s: a 100-byte datagram takes 0.1 s; the second queues behind the first.
    first, link = shape(idle, 1.0, 100, 0.0, 8000.0, 0)
    second, link = shape(link, 1.0, 100, 0.0, 8000.0, 0)
    assert first == pytest.approx(0.1) and second == pytest.approx(0.2) and link.free_at == pytest.approx(1.2)
    later, link = shape(link, 5.0, 50, 0.5, 8000.0, 0)
    assert later == pytest.approx(0.55) and link.free_at == pytest.approx(5.55), "delay, then transmission"


def test_gilbert_step_exact_transitions() -> None:
    # loss 0.3, mean burst 3: leave bad with 1/3, enter bad with 0.3 * (1/3) / 0.7 = 1/7.
    assert gilbert_step(False, 0.5, 0.0, 3.0) is False and gilbert_step(True, 0.0, 0.0, 3.0) is False
    assert gilbert_step(False, 1 / 7 - 1e-9, 0.3, 3.0) is True
    assert gilbert_step(False, 1 / 7 + 1e-9, 0.3, 3.0) is False
    assert gilbert_step(True, 1 / 3 - 1e-9, 0.3, 3.0) is False, "below leave_bad: back to good"
    assert gilbert_step(True, 1 / 3 + 1e-9, 0.3, 3.0) is True
    assert gilbert_step(False, 0.99, 0.9, 1.0) is True, "enter_bad is capped at 1"


def test_gemodel_step_judges_loss_by_the_state_it_was_in() -> None:
    model = (0.1, 0.4, 0.8, 0.05)  # p, r, loss in bad, loss in good
    assert gemodel_step(False, 0.09, 0.5, model) == (True, False), "moves to bad; judged as good"
    assert gemodel_step(False, 0.11, 0.04, model) == (False, True)
    assert gemodel_step(True, 0.39, 0.79, model) == (False, True), "moves to good; judged as bad"
    assert gemodel_step(True, 0.41, 0.81, model) == (True, False)


def test_decide_step_uses_the_gemodel_and_the_drop_correlation() -> None:
    plan = FaultPlan(up=Faults(gemodel=(1.0, 0.0, 1.0, 0.0)))  # always to bad, always lost there
    first, state = decide_step(plan, Direction.UP, 0, 0, DATA, 0.0, ChannelState())
    assert first.action == "deliver" and state.bad, "judged by the good state it was in, then bad"
    second, state = decide_step(plan, Direction.UP, 0, 1, DATA, 0.0, state)
    assert second.action == "drop:burst" and state.bad
    certain = FaultPlan(up=Faults(drop=0.5, drop_correlation=1.0))  # the draw never changes
    d, s = decide_step(certain, Direction.UP, 0, 0, DATA, 0.0, ChannelState(last_drop_u=0.4))
    assert d.action == "drop:random" and s.last_drop_u == 0.4
    d, s = decide_step(certain, Direction.UP, 0, 1, DATA, 0.0, ChannelState(last_drop_u=0.6))
    assert d.action == "deliver" and s.last_drop_u == 0.6


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"gemodel": (0.1, 1.5, 1.0, 0.0)},
            "gemodel=(0.1, 1.5, 1.0, 0.0) holds values that are not probabilities in [0, 1]",
        ),
        (
            {"gemodel": (0.1, 0.2, 1.0, 0.0), "burst_loss": 0.1},
            "gemodel and burst_loss are two settings of one channel; give one",
        ),
        ({"rate_bps": -1.0}, "rate, limit and reorder gap must be >= 0"),
        ({"limit": -1}, "rate, limit and reorder gap must be >= 0"),
        ({"reorder_gap": -1}, "rate, limit and reorder gap must be >= 0"),
        ({"drop": 1.01}, "drop=1.01 is not a probability in [0, 1]"),
        ({"truncate": -0.1}, "truncate=-0.1 is not a probability in [0, 1]"),
        ({"burst_loss": 1.0}, "burst_loss must be below 1"),
        ({"burst_len": 0.99}, "burst_len is a mean number of datagrams, at least 1"),
        ({"jitter_s": -0.01}, "delays must be >= 0"),
        ({"delay_s": -0.01}, "delays must be >= 0"),
        ({"reorder_delay_s": -0.01}, "delays must be >= 0"),
        ({"delay_s": float("nan")}, "fault values must be finite numbers (not nan or inf)"),
        ({"blackhole": ((0.0, float("inf")),)}, "fault values must be finite numbers (not nan or inf)"),
    ],
)
def test_faults_refuse_nonsense_by_name(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        Faults(**settings)
    assert str(info.value) == message


def test_faults_at_their_limits_are_accepted() -> None:
    Faults(drop=1.0, duplicate=0.0, gemodel=(0.0, 1.0, 1.0, 0.0), rate_bps=0.0, limit=0, reorder_gap=0)
    Faults(burst_loss=0.99, burst_len=1.0, delay_s=0.0, blackhole=((0.0, None),))
    assert FaultPlan.both(seed=4, drop=0.5) == FaultPlan(Faults(drop=0.5), Faults(drop=0.5), 4)
    plan = FaultPlan(Faults(drop=0.1), Faults(drop=0.2))
    assert plan.faults(Direction.UP) is plan.up and plan.faults(Direction.DOWN) is plan.down


def test_delivered_datagrams_are_tagged_with_what_was_done() -> None:
    everything = FaultPlan.both(corrupt=1.0, truncate=1.0, duplicate=1.0, reorder=1.0)
    d, _ = decide_step(everything, Direction.UP, 0, 0, DATA, 0.0, ChannelState())
    assert d.tags == ("corrupt", "truncate", "reorder", "duplicate") and d.copies == 2
    nothing, _ = decide_step(FaultPlan(), Direction.UP, 0, 0, DATA, 0.0, ChannelState())
    assert (nothing.action, nothing.copies, nothing.payload, nothing.tags, nothing.delay_s) == (
        "deliver",
        1,
        DATA,
        (),
        0,
    )
    gap_one = FaultPlan(up=Faults(reorder=1.0, reorder_gap=1, delay_s=0.1))
    d, state = decide_step(gap_one, Direction.UP, 0, 0, DATA, 0.0, ChannelState(since_reorder=0))
    assert (d.delay_s, d.tags, state.since_reorder) == (0.0, ("reorder",), 0), "gap 1: every one may go at once"
    gap_three = FaultPlan(up=Faults(reorder=1.0, reorder_gap=3, delay_s=0.1))
    d, state = decide_step(gap_three, Direction.UP, 0, 0, DATA, 0.0, ChannelState(since_reorder=1))
    assert (d.delay_s, d.tags, state.since_reorder) == (0.1, (), 2)


def test_default_seed_is_zero() -> None:
    assert FaultPlan.both(drop=0.5).seed == 0 == FaultPlan().seed


def draws(index: int) -> list[float]:
    """The eight draws of datagram ``index`` of flow 0 upward under seed 0, in their documented order:
    state, drop, duplicate, reorder, jitter, corrupt, truncate, gemodel loss."""
    rng = _rng_for(0, Direction.UP, 0, index)
    return [rng.random() for _ in range(8)]


@pytest.mark.parametrize(
    ("fault", "draw", "tag"),
    [("drop", 1, "drop:random"), ("duplicate", 2, "duplicate"), ("reorder", 3, "reorder"),
     ("corrupt", 5, "corrupt"), ("truncate", 6, "truncate")],
)  # fmt: skip
def test_a_fault_happens_when_its_draw_is_below_its_probability(fault: str, draw: int, tag: str) -> None:
    """Probability p means draws in [0, p): a draw equal to p is not a hit (else p = 0 could hit)."""
    u = draws(3)[draw]

    def outcome(p: float) -> tuple[str, ...]:
        settings: dict[str, Any] = {fault: p}
        d, _ = decide_step(FaultPlan(up=Faults(**settings)), Direction.UP, 0, 3, DATA, 0.0, ChannelState())
        return (d.action, *d.tags)

    assert tag not in outcome(u)
    assert tag in outcome(min(1.0, u + 1e-12))


def test_gilbert_elliott_boundaries() -> None:
    assert not gilbert_step(True, 0.9, 0.0, 2.0), "no loss configured: never stay in the bad state"
    assert gemodel_step(True, 0.5, 0.5, (0.0, 0.5, 0.5, 0.0)) == (True, False), "r = 0.5: u = 0.5 stays bad"
    assert gemodel_step(False, 0.5, 0.5, (0.5, 0.0, 0.0, 0.5)) == (False, False), "p = 0.5: u = 0.5 stays good"
    u_loss = draws(0)[7]
    lossy = FaultPlan(up=Faults(gemodel=(1.0, 0.0, 0.0, u_loss)))  # to bad at once; good loses below u_loss
    d, state = decide_step(lossy, Direction.UP, 0, 0, DATA, 0.0, ChannelState())
    assert d.action == "deliver" and state.bad


def test_the_reorder_gap_keeps_the_channel_state() -> None:
    u_drop = draws(0)[1]
    to_bad: dict[str, Any] = {"gemodel": (1.0, 0.0, 0.0, 0.0), "reorder": 1.0, "delay_s": 0.5}
    d, state = decide_step(FaultPlan(up=Faults(reorder_gap=1, **to_bad)), Direction.UP, 0, 0, DATA, 0.0, ChannelState())
    assert (d.tags, state) == (("reorder",), ChannelState(True, u_drop, 0))
    d, state = decide_step(FaultPlan(up=Faults(reorder_gap=3, **to_bad)), Direction.UP, 0, 0, DATA, 0.0, ChannelState())
    assert (d.tags, state) == ((), ChannelState(True, u_drop, 1))


def test_shape_boundaries() -> None:
    assert shape(LinkState(0.0, (1.0,)), 1.0, 100, 0.0, 0.0, 1) == (0.0, LinkState(0.0, ())), "left at 1.0: not held"
    assert shape(LinkState(), 0.0, 1, 0.0, 0.5, 0) == (16.0, LinkState(16.0, (16.0,))), "8 bits at 0.5 bit/s"
    assert shape(LinkState(0.0, (5.0,)), 1.0, 100, 0.0, 0.0, 0) == (0.0, LinkState(0.0, (5.0,)))


def test_gilbert_step_draws_equal_to_the_probability_are_not_hits() -> None:
    """As for every fault: a transition of probability p takes a draw in [0, p). With loss 0.5 and
    mean burst 2, leaving the bad state and entering it both have probability exactly 0.5."""
    assert gilbert_step(True, 0.5, 0.5, 2.0) is True, "u = 1 / burst_len: stays bad"
    assert gilbert_step(True, 0.5 - 2**-53, 0.5, 2.0) is False
    assert gilbert_step(False, 0.5, 0.5, 2.0) is False, "u = loss / (1 - loss) / burst_len: stays good"
    assert gilbert_step(False, 0.5 - 2**-53, 0.5, 2.0) is True


def test_with_a_reorder_gap_a_draw_equal_to_the_probability_is_not_a_hit() -> None:
    u = draws(3)[3]

    def tags(p: float) -> tuple[str, ...]:
        plan = FaultPlan(up=Faults(reorder=p, reorder_gap=1, delay_s=0.5))
        return decide_step(plan, Direction.UP, 0, 3, DATA, 0.0, ChannelState())[0].tags

    assert tags(u) == () and tags(min(1.0, u + 1e-12)) == ("reorder",)
