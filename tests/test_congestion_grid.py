"""Periodic slowdowns on the wall clock's whole seconds (CongestionConfig.slowdown_grid_s).

A slowdown drains a shared queue only if every sender sharing it slows down at the same time.
Each client has its own monotonic clock (``now``); the wall clock is common to the senders of one
host (and, through NTP, to a millisecond, to other hosts), so the slowdowns are put on it.
"""

from __future__ import annotations

import heapq
import math

import pytest

from udp_price.client.congestion import MARK, CongestionConfig, CongestionController

WALL = 1_800_000_000.25
"""A wall-clock time of the late 2020s, a quarter second past a whole second."""


def controller(mono: float, grid: float = 1.0) -> CongestionController:
    """A controller whose ``now`` is a monotonic clock reading ``mono`` at wall time WALL."""
    return CongestionController(CongestionConfig(max_window=64, slowdown_grid_s=grid), clock_offset=WALL - mono)


def offset_of(c: CongestionController) -> float:
    assert isinstance(c.clock_offset, float)
    return c.clock_offset


def wall_of(c: CongestionController, when: float | None) -> float:
    assert when is not None
    return when + offset_of(c)


def feed(c: CongestionController, mono_start: float, rtt: float, seconds: float) -> list[float]:
    """Answers to a full window every ``rtt`` for ``seconds``; returns the wall times at which
    slowdowns began."""
    began, now = [], mono_start
    while now < mono_start + seconds:
        now += rtt
        for _ in range(c.window):
            before = c.stats["cc.slowdowns"]
            c.on_answered(now, now - rtt, rtt, in_flight=c.window)
            if c.stats["cc.slowdowns"] > before:
                began.append(now + offset_of(c))
    return began


def test_the_first_slowdown_waits_for_the_next_whole_second_of_the_wall_clock() -> None:
    c = controller(mono=500.0)
    feed(c, 500.0, 0.01, 0.03)  # slow start: 4 -> 32, not yet the maximum
    assert c.next_slowdown_at is None
    assert c.on_congestion(500.2, 500.15, MARK)
    due = wall_of(c, c.next_slowdown_at)
    assert due == pytest.approx(math.ceil(WALL + 0.2 + 2 * 0.01))  # two RTTs later, then the grid
    assert due - (WALL + 0.2) < 1.0 + 1e-6


def test_slow_start_that_ends_at_the_maximum_window_schedules_the_first_slowdown_too() -> None:
    """A sender that joins a standing queue takes it for base delay; if its maximum window adds
    less than the target on top, no signal ever comes. Its first slowdown is then scheduled when
    slow start reaches the maximum, and measures the base."""
    c = controller(mono=500.0)
    feed(c, 500.0, 0.01, 0.03)
    assert c.window == 32 and c.next_slowdown_at is None
    began = feed(c, 500.03, 0.01, 2.0)
    assert c.window == 64 or c.slowdown_until is not None
    assert began and began[0] == pytest.approx(math.ceil(WALL + 0.05), abs=0.011)
    assert not any(k.startswith("cc.reductions") for k in c.stats)


def test_without_a_grid_the_slowdown_is_due_two_rtts_after_the_first_reduction() -> None:
    c = controller(mono=500.0, grid=0.0)
    feed(c, 500.0, 0.01, 0.03)
    c.on_congestion(500.2, 500.15, MARK)
    assert c.next_slowdown_at == pytest.approx(500.2 + 2 * 0.01)


def test_senders_with_different_monotonic_clocks_slow_down_at_the_same_instants() -> None:
    """Two processes started at different times (their monotonic clocks differ by hours) and
    with different RTTs: every slowdown of each starts on a whole wall-clock second, and they
    share those seconds."""
    a, b = controller(mono=1000.0), controller(mono=7321.0625)
    a.on_congestion(1000.0, 999.99, MARK)
    b.on_congestion(7321.0625 + 0.3, 7321.0, MARK)
    slow_a = feed(a, 1000.0, 0.010, 12.0)
    slow_b = feed(b, 7321.0625 + 0.3, 0.013, 12.0)
    assert len(slow_a) >= 5 and len(slow_b) >= 5
    for t in slow_a + slow_b:
        assert t - math.floor(t) < 0.014, f"a slowdown began {t - math.floor(t):.3f} s after a whole second"
    common = {math.floor(t) for t in slow_a} & {math.floor(t) for t in slow_b}
    assert len(common) >= 4, "the two senders' slowdowns do not coincide"


@pytest.mark.parametrize("offset", [-WALL, 0.0, 1e12, -1e-9])
def test_any_clock_offset_still_gives_slowdowns_at_most_a_grid_later(offset: float) -> None:
    c = CongestionController(CongestionConfig(max_window=64), clock_offset=offset)
    c.on_congestion(10.0, 9.99, MARK)
    assert c.next_slowdown_at is not None
    assert 10.0 <= c.next_slowdown_at <= 10.0 + 1.0 + 1e-3 * max(1.0, abs(offset) * 1e-9)


@pytest.mark.parametrize("grid", [-1.0, math.inf, math.nan])
def test_a_grid_that_cannot_be_kept_is_refused(grid: float) -> None:
    with pytest.raises(ValueError, match="slowdown_grid_s"):
        CongestionConfig(slowdown_grid_s=grid)


Run = tuple[list[CongestionController], list[list[float]]]


def shared_bottleneck(starts: list[float], grid: float, seconds: float) -> Run:
    """Senders with their own monotonic clocks sharing one FIFO bottleneck of 1,000 requests/s
    (2 ms of path besides), each starting at ``starts[i]`` and keeping its window full. Returns
    the controllers and, per sender, the simulated times at which its slowdowns began."""
    rate, base = 1000.0, 0.002
    monos = [1000.0 * (i + 1) + 0.37 * i for i in range(len(starts))]
    cs = [controller(mono=WALL + monos[i], grid=grid) for i in range(len(starts))]  # wall clock = simulated time
    slowdowns: list[list[float]] = [[] for _ in cs]
    in_flight = [0] * len(cs)
    free_at, seq = 0.0, 0
    events: list[tuple[float, int, int, float | None]] = [(s, i, i, None) for i, s in enumerate(starts)]
    heapq.heapify(events)
    for _ in range(1_000_000):  # bounded; ends on simulated time
        if not events or events[0][0] > seconds:
            break
        t, _, i, sent = heapq.heappop(events)
        if sent is not None:
            in_flight[i] -= 1
            before = cs[i].stats["cc.slowdowns"]
            cs[i].on_reply(t + monos[i], [sent + monos[i]], 1, busy=False, marked=False, in_flight=in_flight[i])
            if cs[i].stats["cc.slowdowns"] > before:
                slowdowns[i].append(t)
        while in_flight[i] < cs[i].window:
            free_at = max(t, free_at) + 1.0 / rate
            in_flight[i] += 1
            seq += 1
            heapq.heappush(events, (free_at + base, len(cs) + seq, i, t))
    return cs, slowdowns


@pytest.mark.parametrize("stagger", [0.3, 0.5, 0.7, 1.1])
def test_senders_sharing_a_bottleneck_slow_down_together_and_agree_on_the_base(stagger: float) -> None:
    """8 senders started ``stagger`` seconds apart, each latecomer while the others keep a queue.
    On every even second after the last one started most of them slow down together, so the queue
    drains for all at once (to the 16 ms that 8 slowdown windows of 2 still hold at 1,000/s) and
    all measure the same base RTT: none takes the others' standing queue for its own base and
    tolerates more than they do. (With slowdown_grid_s=0 the bases reach 18-24 ms: the bound on
    the largest fails.)"""
    cs, slowdowns = shared_bottleneck([stagger * i for i in range(8)], grid=1.0, seconds=20.0)
    bases = [c.min_rtt or 0.0 for c in cs]
    shown = [round(b * 1000, 1) for b in bases]
    assert max(bases) - min(bases) <= 0.002 + 1e-9, shown  # two requests' service time at 1,000/s
    assert max(bases) <= 0.002 + 8 * 2 / 1000 + 0.001, shown
    first = math.ceil(8 * stagger + 1.0)
    for mark in range(first + first % 2, 20, 2):
        together = sum(any(0 <= t - mark < 0.1 for t in each) for each in slowdowns)
        assert together >= 6, f"{together} of 8 senders slowed down at {mark} s"
