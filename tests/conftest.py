"""Fixtures only; the helpers they use live in helpers.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers import CATALOG, RunningServer, serving

from udp_price.catalog import load_catalog
from udp_price.server.core import QuoteServer


@pytest.fixture
def server() -> Iterator[RunningServer]:
    """A real udp-price server on 127.0.0.1:<free port>, serving catalog.csv from a thread."""
    with serving(QuoteServer(load_catalog(CATALOG))) as running:
        yield running
