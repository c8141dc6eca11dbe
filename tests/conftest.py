"""Fixtures only; the helpers they use live in helpers.py."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from helpers import CATALOG, RunningServer, serving
from hypothesis import HealthCheck, Phase, settings
from overloadlib import ShiftedWallClock

from udp_price.catalog import load_catalog
from udp_price.server.core import QuoteServer

# A loaded CI machine must not turn a slow example into a failure: no per-example deadline there.
settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow])
# scripts/mutate.sh: the same examples for every mutant (derandomized), fewer of them, no database,
# and no shrinking: a mutant needs one failing example to be killed, not the smallest one, and
# shrinking under mutmut's trampolines took longer than the tests (mutants timed out instead).
settings.register_profile(
    "mutation",
    deadline=None,
    derandomize=True,
    max_examples=10,
    database=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")


@pytest.fixture(autouse=bool(os.environ.get("MUTANT_UNDER_TEST")))
def _forget_memoized_items() -> None:
    """Under mutmut, each mutant runs in a process forked after the unmutated code filled the item
    codec's memos: clear them, or a mutant in item coding would answer from a memo and survive."""
    from udp_price.wire import structs

    structs._item_or_reason.cache_clear()
    structs._item_field.cache_clear()


@pytest.fixture
def server() -> Iterator[RunningServer]:
    """A real udp-price server on 127.0.0.1:<free port>, serving catalog.csv from a thread."""
    with serving(QuoteServer(load_catalog(CATALOG))) as running:
        yield running


@pytest.fixture
def wall(monkeypatch: pytest.MonkeyPatch) -> Iterator[ShiftedWallClock]:
    """The wall clock as the server's loop and the client's API read it, steppable (``offset``)."""
    from udp_price.client import api
    from udp_price.server import loop

    shim = ShiftedWallClock()
    monkeypatch.setattr(loop, "time", shim)
    monkeypatch.setattr(api, "time", shim)
    yield shim
