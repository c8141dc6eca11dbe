"""Review 19b (attack review, fresh eyes, round 2): the wall-clock grid of periodic slowdowns
(``slowdown_grid_s``, ``clock_offset``), the deep-backlog mark by queueing time, and
bench/slow_server.py.

Findings first (each test failed until its fix: the slowdown period as a power of two of the
grid, the clock offset read afresh, the grid's range checked, a wait bounded by the monotonic
time since the socket was last empty, the stamp read after a pause, slow_server's own flag
parsed and shown), then attacks that held (passing tests that pin the promise they attacked).
Round 1 (tests/test_review19_attacks.py) covered ancillary
data, clock steps under CLOCK_STEP_S, a flood from another source and the standing-RTT deque;
nothing of it is repeated here."""

from __future__ import annotations

import asyncio
import math
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import expected_prices, spawn
from overloadlib import ShiftedWallClock, all_ok, marks, pair_of_sockets, replies, send_quotes, wait_until_queued

from udp_price.catalog import Catalog
from udp_price.client import api
from udp_price.client.congestion import MARK, CongestionConfig, CongestionController
from udp_price.server import loop
from udp_price.server.core import QuoteServer
from udp_price.server.overload import CLOCK_STEP_S, READ_DROPS_BURST, OverloadDetector

ROOT = Path(__file__).resolve().parent.parent
PRICES = expected_prices()
needs_timestamps = pytest.mark.skipif(loop.SO_TIMESTAMPNS is None, reason="SO_TIMESTAMPNS is Linux-only")
WALL_NOW = 1_800_000_000.123456  # time.time() around 2027, with a fraction of a second
STEP = 0.001  # one answer per millisecond in the simulations below


# ---------------------------------------------------------------- helpers


def slowdown_starts(
    first_signal_at: float,
    rtt: float,
    clock_offset: float = WALL_NOW,
    seconds: float = 20.0,
    config: CongestionConfig | None = None,
) -> list[float]:
    """Wall-clock instants (``now + clock_offset``) at which a controller's periodic slowdowns
    began: one answer per millisecond at a flat ``rtt`` (no queueing-delay signal), one overload
    mark at ``first_signal_at`` (the first reduction, after which slowdowns begin). Bounded:
    ``seconds / STEP`` answers."""
    c = CongestionController(config or CongestionConfig(), clock_offset=clock_offset)
    starts = []
    for i in range(int(seconds / STEP)):
        now = i * STEP
        if abs(now - first_signal_at) < STEP / 2:
            c.on_congestion(now, now - rtt, MARK, rtt)
        before = c.stats["cc.slowdowns"]
        c.on_answered(now, now - rtt, rtt, in_flight=c.window)
        if c.stats["cc.slowdowns"] > before:
            starts.append(now + clock_offset)
    return starts


def together(a: list[float], b: list[float], within: float = 0.01) -> list[float]:
    """The slowdowns of ``b`` that began within ``within`` seconds of one of ``a``'s."""
    return [t for t in b if any(abs(t - s) <= within for s in a)]


def run_slow_server(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / "slow_server.py"), *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )


# ---------------------------------------------------------------- findings (each failed until fixed)


@pytest.mark.parametrize("rtt", [0.030, 0.045, 0.060])
def test_two_senders_on_one_wall_clock_with_the_same_rtt_slow_down_together(rtt: float) -> None:
    """The grid's promise (CongestionConfig.slowdown_grid_s, commit 4ca771b): "senders sharing a
    bottleneck slow down together". Two senders, SAME path RTT, SAME wall clock, whose first
    reductions came one second apart (one started a second later, the latecomer case slowdowns
    exist for). The grid rounds the start of each slowdown up to a whole second but not the
    period: from a standing RTT of 26.3 ms up (19 x a 2-RTT slowdown > 1 s) the cycle is 2 s or
    more, and its phase is the second the first reduction fell in. At 30 ms both slow down every
    2 s, one on even seconds, the other on odd ones: never together, so neither's slowdown
    drains the queue the other keeps. A 25 ms delay target over any base of a few ms puts the
    standing RTT in exactly this range (the bench's bottleneck queue p99 is 58-191 ms)."""
    first = slowdown_starts(0.3, rtt)
    later = slowdown_starts(1.3, rtt)
    assert len(first) >= 4 and len(later) >= 4
    shared = together(first, later)
    assert len(shared) == len(later), (
        f"at a {rtt * 1000:.0f} ms RTT only {len(shared)} of the latecomer's {len(later)} slowdowns "
        f"coincide with the first sender's (first at {[round(t % 10, 3) for t in first[:4]]}, "
        f"later at {[round(t % 10, 3) for t in later[:4]]}, wall seconds mod 10)"
    )


@pytest.mark.parametrize("step", [0.5, -0.3])
def test_slowdowns_stay_on_the_wall_clock_s_whole_seconds_after_it_is_stepped(
    wall: ShiftedWallClock, step: float
) -> None:
    """QuoteClient reads ``time.time() - loop.time()`` ONCE, when it opens. The wall clock is then
    stepped (chrony's makestep or ntpd's first sync after boot, an operator's ``date -s``) while
    a bulk run goes on: every client opened after the step slows down on whole seconds of the
    clock as it now is, the one opened before keeps the old phase for the rest of its run (0.5 s
    off: never together with any of them). docs: "on the next whole multiple of this many
    seconds of the wall clock"; a controller fed the wall clock's offset afresh (per slowdown
    scheduled) would stay on it."""

    async def scenario() -> list[float]:
        config = CongestionConfig()
        async with api.QuoteClient(("127.0.0.1", 9), congestion=config) as before:
            wall.offset = step  # the clock steps while ``before`` runs
            async with api.QuoteClient(("127.0.0.1", 9), congestion=config) as after:
                aio = asyncio.get_running_loop()
                phases = []
                for client in (before, after):
                    c = client.session.congestion
                    assert c is not None
                    now = aio.time()
                    assert c.on_congestion(now, now - 0.01, MARK, 0.01)
                    assert c.next_slowdown_at is not None
                    at_wall = c.next_slowdown_at + (wall.time() - aio.time())  # on the wall clock as it is now
                    phases.append(abs(at_wall - round(at_wall)))
                return phases

    before_phase, after_phase = asyncio.run(scenario())
    assert after_phase < 0.005, "the client opened after the step is on the grid"
    assert before_phase < 0.005, (
        f"the client opened before a {step:+} s step of the wall clock slows down {before_phase:.3f} s "
        "off its whole seconds, for the rest of its run"
    )


@pytest.mark.parametrize("grid", [5e-324, 1e-300, 1e-306])
def test_every_grid_the_config_accepts_schedules_slowdowns_without_raising(grid: float) -> None:
    """CongestionConfig checks ``0 <= slowdown_grid_s < inf`` and accepts these; the first
    reduction then raises OverflowError from math.ceil((when + offset) / grid) = ceil(inf) inside
    on_congestion, i.e. inside the client's datagram_received. Either refuse such a grid in
    __post_init__ or schedule with it."""
    try:
        config = CongestionConfig(slowdown_grid_s=grid)
    except ValueError:
        return  # refused up front: fine
    c = CongestionController(config, clock_offset=WALL_NOW)
    assert c.on_congestion(1.0, 0.99, MARK, 0.01)
    assert c.next_slowdown_at is not None and c.next_slowdown_at >= 1.0


@needs_timestamps
def test_a_request_that_really_waited_over_ten_seconds_is_marked(wall: ShiftedWallClock) -> None:
    """CLOCK_STEP_S: a wait of 10 s or more "is a step of the wall clock, not a queue", because
    "a 4 MB socket buffer holds about two seconds of requests at the rates this server reaches".
    bench/slow_server.py (this change) accepts --service-us up to 1,000,000: at 0.7 s per request
    a wake-up of 16 requests lasts 11.2 s, and the requests that came during it have waited that
    long when the next wake-up reads them (a server stopped or swapped out for 10 s is the same
    case). That queue is real: the monotonic clock (``now``) moved as much as the wall clock, a
    difference the loop has and a step would not show; yet its replies go unmarked."""
    service_s = 0.7
    server, client = pair_of_sockets()
    core = QuoteServer(Catalog.from_prices(PRICES))
    handle = core.handle_datagram
    monotonic = [100.0]

    def slow_handle(data: bytes, addr: Any, now: float) -> bytes | None:
        wall.offset += service_s  # the service time passes, on both clocks
        monotonic[0] += service_s
        return handle(data, addr, now)

    core.handle_datagram = slow_handle  # type: ignore[method-assign]
    detector = OverloadDetector(stats=core.stats, timestamps=loop.reports_queueing_time(server))

    def wake_up() -> int:  # as serve() runs it: the detector is told when the wake-up began
        began = monotonic[0]
        marking, want_drops = detector.next_burst(began)
        handled, drops, _ = loop._drain(
            server, core, loop.Control(), lambda: monotonic[0], None, marking, want_drops, detector
        )
        detector.after_burst(handled, drops, began)
        return handled

    with server, client:
        send_quotes(client, READ_DROPS_BURST)
        wait_until_queued(server)
        assert wake_up() == READ_DROPS_BURST  # 11.2 s of service; the next wake-up reads the timestamp
        assert READ_DROPS_BURST * service_s >= CLOCK_STEP_S
        assert all_ok(replies(client))
        send_quotes(client, 5, first=100)  # arrived as that wake-up began: they waited 11.2 s
        wait_until_queued(server)
        assert wake_up() == 5
        got = replies(client)
        assert len(got) == 5 and all_ok(got), "answered exactly"
        assert all(marks(got)), "requests that waited 11 s in the socket's queue were not marked"


@needs_timestamps
def test_after_a_light_load_a_request_that_waited_300_ms_is_marked_as_protocol_md_says(wall: ShiftedWallClock) -> None:
    """docs/protocol.md: the server sets the mark while "the oldest request of the wake-up that
    builds the reply had waited 100 ms or more in the socket's queue". The wait is only read on a
    wake-up after one of 16+ datagrams (or every 64th): a server at light load (one datagram per
    wake-up) whose loop then stalls 300 ms (a catalog swap-in, a slow tick, the host not
    scheduling it) answers the 30 requests that queued, each having waited up to 300 ms, unmarked.
    The loop knows from its monotonic clock that the wake-up came 300 ms after the last one; it
    could read the stamp then (or protocol.md could say "on busy wake-ups")."""
    server, client = pair_of_sockets()
    core = QuoteServer(Catalog.from_prices(PRICES))
    detector = OverloadDetector(stats=core.stats, timestamps=loop.reports_queueing_time(server))

    def wake_up(now: float) -> int:
        marking, want_drops = detector.next_burst(now)
        handled, drops, _ = loop._drain(server, core, loop.Control(), lambda: now, None, marking, want_drops, detector)
        detector.after_burst(handled, drops, now)
        return handled

    with server, client:
        send_quotes(client, 1)  # light load
        wait_until_queued(server)
        assert wake_up(0.0) == 1
        replies(client)
        send_quotes(client, 30, first=100)
        wait_until_queued(server)
        wall.offset = 0.3  # the loop stalled 300 ms (both clocks moved)
        assert wake_up(0.3) == 30
        got = replies(client)
        assert len(got) == 30 and all_ok(got), "answered exactly"
        assert all(marks(got)), "requests whose oldest waited 300 ms were not marked"


@pytest.mark.parametrize(
    "args",
    [
        ["--service-us", "abc"],
        ["--service-us=0x10"],
        ["--service-us", "--listen", "127.0.0.1:0"],  # the value forgotten: the next flag is taken for it
        ["--service-us", "-5"],
    ],
)
def test_slow_server_refuses_a_bad_service_time_with_one_line_and_the_usage_exit_code(args: list[str]) -> None:
    """A careless user of bench/slow_server.py: every argument but --service-us goes to the
    server, whose documented exit code for bad arguments is 2. A non-number gets a ValueError
    traceback and exit code 1; an out-of-range one a one-line message but exit code 1."""
    done = run_slow_server(*args, "--listen", "127.0.0.1:0", "--catalog", str(ROOT / "catalog.csv"))
    assert "Traceback" not in done.stderr, done.stderr[-400:]
    assert done.returncode == 2, f"exit code {done.returncode}: {done.stderr.strip()[-200:]}"
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) <= 2 and "service-us" in done.stderr  # (argparse: usage + error)


def test_slow_server_help_mentions_its_own_flag() -> None:
    """``slow_server.py --help`` prints the server's help, which says nothing of --service-us."""
    done = run_slow_server("--help")
    assert done.returncode == 0
    assert "--service-us" in done.stdout, "the one flag this script adds is not in its --help"


# ---------------------------------------------------------------- attacks that held


@pytest.mark.parametrize(
    "offset",
    [
        0.0,
        WALL_NOW,  # today, float precision at 1.8e9 (ulp 2.4e-7 s)
        -1_000_000.5,  # an RTC-less box booted at 1970 with 11 days of uptime: a negative offset
        4_102_444_800.987,  # the year 2100
        32_503_680_000.25,  # the year 3000 (ulp 3.8e-6 s)
    ],
)
def test_slowdowns_fall_on_whole_wall_seconds_and_cost_little_for_any_plausible_clock(offset: float) -> None:
    """A host whose clock is years off, negative or far ahead: slowdowns still start within one
    answer of a whole second of ITS wall clock, neither never (a grid pushed to infinity) nor on
    every answer (a grid that rounds to the past): one a second at a 20 ms RTT, each 2 RTTs long."""
    starts = slowdown_starts(0.3, 0.020, clock_offset=offset)
    assert 18 <= len(starts) <= 20, f"{len(starts)} slowdowns in 20 s"
    for t in starts:
        assert 0 <= t - math.floor(t) <= STEP * 1.5 or math.ceil(t) - t < 1e-5, f"off the grid: {t!r}"
    c = CongestionController(CongestionConfig(), clock_offset=offset)
    held = 0
    for i in range(int(20.0 / STEP)):  # how much of the time the window is held at 2
        now = i * STEP
        if i == 300:
            c.on_congestion(now, now - 0.02, MARK, 0.02)
        c.on_answered(now, now - 0.02, 0.02, in_flight=c.window)
        held += c.slowdown_until is not None
    assert held * STEP <= 0.1 * 20.0, f"held at the slowdown window {held * STEP:.2f} s of 20"


@pytest.mark.parametrize("rtt", [0.005, 0.015, 0.025])
def test_below_26_ms_senders_that_started_apart_slow_down_together_every_second(rtt: float) -> None:
    """The case the grid does fix (the bench's loopback bottleneck): a cycle under 1 s rounds up
    to the next whole second, so every sender slows down every second, all on the same ones."""
    first = slowdown_starts(0.3, rtt)
    later = slowdown_starts(1.7, rtt)
    assert len(later) >= 15
    assert together(first, later) == later


def test_a_grid_of_zero_ignores_the_wall_clock_entirely() -> None:
    """slowdown_grid_s = 0 (the old behaviour): the offset, even NaN, plays no part."""
    config = CongestionConfig(slowdown_grid_s=0.0)
    a = slowdown_starts(0.3, 0.03, clock_offset=0.0, config=config)
    b = [t - WALL_NOW for t in slowdown_starts(0.3, 0.03, clock_offset=WALL_NOW, config=config)]
    assert len(a) == len(b) >= 5 and all(abs(x - y) < 1e-6 for x, y in zip(a, b, strict=True))
    c = CongestionController(config, clock_offset=math.nan)
    assert c.on_congestion(1.0, 0.99, MARK, 0.01)
    assert c.next_slowdown_at == pytest.approx(1.02)


@needs_timestamps
def test_a_stall_under_ten_seconds_marks_exactly_the_requests_that_waited(wall: ShiftedWallClock) -> None:
    """The companion of the finding above that holds: a 2 s stall of the loop (the monotonic clock
    moves with the wall clock) marks every reply of the wake-up that finds its queue, answers
    each exactly, and the next wake-up with fresh requests is unmarked."""
    server, client = pair_of_sockets()
    core = QuoteServer(Catalog.from_prices(PRICES))
    detector = OverloadDetector(stats=core.stats, timestamps=loop.reports_queueing_time(server))

    def wake_up(now: float) -> int:
        marking, want_drops = detector.next_burst(now)
        handled, drops, _ = loop._drain(server, core, loop.Control(), lambda: now, None, marking, want_drops, detector)
        detector.after_burst(handled, drops, now)
        return handled

    with server, client:
        send_quotes(client, READ_DROPS_BURST)
        wait_until_queued(server)
        assert wake_up(0.0) == READ_DROPS_BURST
        replies(client)
        send_quotes(client, 40, first=100)
        wait_until_queued(server)
        wall.offset = 2.0  # stalled 2 s
        assert wake_up(2.0) == 40
        wall.offset = 0.0  # (what follows arrives after the stall: stamps and wall clock agree again)
        got = replies(client)
        assert len(got) == 40 and all_ok(got) and all(marks(got))
        send_quotes(client, READ_DROPS_BURST, first=300)
        wait_until_queued(server)
        assert wake_up(2.1) == READ_DROPS_BURST
        got = replies(client)
        assert len(got) == READ_DROPS_BURST and all_ok(got) and not any(marks(got))


def test_slow_server_stops_on_sigterm_after_the_request_in_hand_not_after_its_queue() -> None:
    """An operator under pressure: SIGTERM to a slow server with 20 requests queued at 1 s each.
    It stops after the request in hand (exit 0, the documented clean stop), not 20 s later, and
    answers that one exactly (the sleep is resumed after the signal, PEP 475, then the loop sees
    the stop before the next datagram)."""
    proc, line = spawn(
        ["bench/slow_server.py", "--service-us", "1000000", "--listen", "127.0.0.1:0", "--catalog", "catalog.csv"],
        "listening on",
    )
    host, _, port = line.split("listening on ")[1].split()[0].rpartition(":")
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        client.connect((host, int(port)))
        client.settimeout(10.0)
        send_quotes(client, 20)
        first = client.recv(2048)  # the first answer: the server is inside the second sleep now
        assert all_ok([first])
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10.0)
        assert proc.returncode == 0, "stopped cleanly, without working through its queue"
        client.setblocking(False)
        got = replies(client)
        assert len(got) <= 2 and all_ok(got), f"{len(got)} more answers after SIGTERM"
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


def forgotten_base_seconds(base: float, clock_offset: float, seconds: float = 60.0) -> float:
    """A sender behind a queue just under the target that drains only in its slowdowns: for how
    many seconds, after the first 10, the base RTT a slowdown measured had left the history."""
    queue = 0.8 * CongestionConfig().target_floor_s
    c = CongestionController(CongestionConfig(max_window=64), clock_offset=clock_offset)
    c.on_congestion(0.0, -1.0, MARK)
    in_flight: list[tuple[float, float]] = []
    now, last, forgotten = 0.0, 0.0, 0.0
    for _ in range(2_000_000):  # bounded; ends on simulated time
        if now >= seconds:
            break
        while len(in_flight) < c.window:
            in_flight.append((now, base if c.window <= c.config.slowdown_window else base + queue))
        sent, rtt = in_flight.pop(0)
        now = max(now, sent + rtt)
        c.on_reply(now, [sent], 1, busy=False, marked=False, in_flight=len(in_flight))
        if now > 10.0 and c.min_rtt is not None and c.min_rtt > base + 1e-9:
            forgotten += now - last
        last = now
    return forgotten


@pytest.mark.parametrize("base", [0.05, 0.1, 0.2, 0.3])
@pytest.mark.parametrize("phase", [0.37, 0.93])
def test_the_grid_s_extra_second_still_leaves_a_slowdown_cycle_inside_the_base_history(
    base: float, phase: float
) -> None:
    """Rounding each slowdown up to the next whole wall second lengthens the cycle by up to 1 s;
    the base history (5 intervals of at least 1 s and 16 RTTs) still spans it, on longer paths
    than round 1 tried (up to 300 ms) and at any phase of the wall clock."""
    assert forgotten_base_seconds(base, WALL_NOW + phase) == 0.0
