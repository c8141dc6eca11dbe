"""Run many quotes through the fault proxy and judge every answer against catalog.csv."""

from __future__ import annotations

import asyncio
import random
import zlib
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from helpers import expected_prices

from udp_price.auth import Key
from udp_price.client.api import NoAnswer, QuoteClient, QuoteResult
from udp_price.client.retry import RetryPolicy
from udp_price.faults.plan import FaultPlan
from udp_price.faults.relay import FaultProxy
from udp_price.wire import Status

PRICES = expected_prices()


@dataclass
class Report:
    """Per-scenario outcome. ``wrong`` must always be 0: every answer exact, or an explicit failure."""

    name: str
    sent: int = 0
    completed: int = 0
    failed: int = 0
    wrong: int = 0
    attempts: list[int] = field(default_factory=list)
    client: Counter[str] = field(default_factory=Counter)
    proxy: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    """Each explicit failure: its outcome and attempts (what an assertion on ``completed`` shows)."""

    @property
    def mean_attempts(self) -> float:
        return sum(self.attempts) / len(self.attempts) if self.attempts else 0.0

    def line(self) -> str:
        return (
            f"{self.name}: sent={self.sent} completed={self.completed} failed={self.failed} "
            f"wrong={self.wrong} mean_attempts={self.mean_attempts:.2f}"
            + "".join(f"\n  failed: {f}" for f in self.failures[:5])
        )


def orders(n: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    items = sorted(PRICES)
    return [(rng.choice(items), rng.randint(1, 1000)) for _ in range(n)]


def judge(report: Report, order: tuple[str, int], outcome: QuoteResult | NoAnswer) -> None:
    item, qty = order
    if isinstance(outcome, NoAnswer):
        report.failed += 1
        report.attempts.append(outcome.attempts)
        report.failures.append(f"{qty} x {item!r}: {outcome.outcome.value}: {outcome}")
        return
    report.attempts.append(outcome.attempts)
    if (outcome.item, outcome.quantity, outcome.status, outcome.total) != (item, qty, Status.OK, PRICES[item] * qty):
        report.wrong += 1
        report.problems.append(f"asked {qty} x {item!r}, got {outcome}")
    else:
        report.completed += 1


async def quote_all(
    client: QuoteClient, work: list[tuple[str, int]], window: int = 16, pace_s: float = 0.0
) -> list[QuoteResult | NoAnswer]:
    """Every order quoted once: at most ``window`` in flight, the i-th starting no earlier than i * pace_s."""
    gate = asyncio.Semaphore(window)
    start = asyncio.get_running_loop().time()

    async def one(i: int, item: str, qty: int) -> QuoteResult | NoAnswer:
        await asyncio.sleep(max(0.0, start + i * pace_s - asyncio.get_running_loop().time()))
        async with gate:
            try:
                return await client.quote(item, qty)
            except NoAnswer as e:
                return e

    return await asyncio.gather(*(one(i, item, qty) for i, (item, qty) in enumerate(work)))


def judge_all(report: Report, work: list[tuple[str, int]], outcomes: list[QuoteResult | NoAnswer]) -> Report:
    assert len(outcomes) == len(work), "every request reported exactly once"
    ids = [o.request_id for o in outcomes if isinstance(o, QuoteResult)]
    assert len(ids) == len(set(ids)), "no answer reported twice"
    for order, outcome in zip(work, outcomes, strict=True):
        judge(report, order, outcome)
    print(report.line())
    return report


async def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` if it does not within ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        await asyncio.sleep(0.005)


async def run_scenario(
    name: str,
    server: tuple[str, int],
    plan: FaultPlan,
    n: int = 300,
    window: int = 16,
    policy: RetryPolicy | None = None,
    pace_s: float = 0.0,
    during: Callable[[FaultProxy, QuoteClient], Coroutine[Any, Any, None]] | None = None,
    key: Key | None = None,
    settled: Callable[[FaultProxy], bool] | None = None,
) -> Report:
    """``n`` quotes through a FaultProxy running ``plan`` in front of ``server``, judged one by one."""
    report = Report(name, sent=n)
    work = orders(n, seed=zlib.crc32(name.encode()))
    async with FaultProxy(plan, upstream=server) as proxy, QuoteClient(proxy.address, policy, key=key) as client:
        side = asyncio.create_task(during(proxy, client)) if during else None
        outcomes = await quote_all(client, work, window, pace_s)
        if side is not None:
            await side
        # Delayed and duplicated datagrams may still be on their way: count once they have landed.
        await wait_for(lambda: proxy.held.count == 0 and (settled is None or settled(proxy)), "the proxy to settle")
        report.client.update(client.stats)
        report.proxy.update(proxy.stats)
    return judge_all(report, work, outcomes)


PATIENT = RetryPolicy(max_attempts=40, deadline_s=40.0)
"""Enough attempts that completing is certain on any machine. At 30% loss each way a round trip
fails with p = 0.51, so a request fails after k lost attempts with p = 0.51**k. The default policy
gives k = 20 on an idle host (RTO 50 ms), but its 10 s deadline holds only about ten when a loaded
host's RTTs push the RTO toward its 1 s ceiling: 0.51**10 = 1e-3 per request, several failed rows a
day across the matrix's 1,800 lossy quotes (seen under a CPU burner). Even all 20 attempts fail
together with p = 0.51**20 = 1.4e-6 per request, 4e-4 per run of 300 quotes: it happened once, in
the matrix with keys on, on its 6th run in a row under a CPU burner. 0.51**40 = 2e-12. The
deadline only bounds a broken client; requests starved at the end of a run by a stuck RTO are
tests/test_client_session.py's test_the_last_requests_of_a_run_escape_a_loss_burst_counted_in_datagrams."""
