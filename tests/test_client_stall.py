"""A server that stalls (stopped, in a GC pause, reloading) keeps what it receives and answers it
late. Its silence must cost a probe or two per RTO, not a copy of every pending request at each
resume (duplicate work for the server, spurious retransmissions refunded to the retry budget)."""

from __future__ import annotations

from helpers import expected_prices
from sessionsim import Fate, Sim

from udp_price.catalog import Catalog
from udp_price.client.events import Answered
from udp_price.client.loss_detection import PTO_PROBES, TAIL_REQUESTS
from udp_price.client.retry import RetryPolicy
from udp_price.client.session import ClientSession
from udp_price.server.core import QuoteServer
from udp_price.wire import QuoteReply, QuoteRequest, Status

PRICES = expected_prices()
STALL_S = 1.2
PERIOD_S = 2.0


def stalling(start: float = 1.0, serve_s: float = 0.0002) -> Fate:
    """Up for 0.8 s, then stalled for 1.2 s, every 2 s from ``start``: the datagrams that arrive in
    a stall are served when it ends, in order, one per ``serve_s``."""
    queued: dict[int, int] = {}

    def fate(direction: str, index: int, now: float) -> list[float]:
        stall, phase = divmod(now - start, PERIOD_S)
        if direction == "up" and now >= start and phase < STALL_S:
            queued[int(stall)] = position = queued.get(int(stall), 0) + 1
            return [STALL_S - phase + position * serve_s]
        return [0.001]

    return fate


def test_a_stalling_server_gets_a_few_probes_per_rto_not_a_copy_of_every_pending_request() -> None:
    s = Sim(ClientSession(RetryPolicy(), 0.0), QuoteServer(Catalog.from_prices(PRICES)), stalling())
    for i in range(10):  # answered before the first stall: the path is known
        s.send(QuoteRequest(i + 1, "apple", 1))
    s.run(0.9)
    rows = 10
    for stall in range(5):
        s.run(1.0 + stall * PERIOD_S)  # a stall begins with 256 requests pending
        for i in range(256):
            s.send(QuoteRequest(1000 + rows + i, "apple", i + 1))
        rows += 256
        s.run(1.0 + stall * PERIOD_S + PERIOD_S - 0.01)
    assert not s.failed() and len(s.answered()) == rows
    for event in s.events.values():
        assert isinstance(event, Answered) and isinstance(event.reply, QuoteReply)
        assert event.reply.status is Status.OK
    stats = s.session.stats
    assert TAIL_REQUESTS < 256, "256 pending is no run's tail"
    assert stats["retransmissions"] <= PTO_PROBES * stats["timeouts"]
    assert len(s.sent_at) - rows <= PTO_PROBES * 4 * 5, "at most 4 RTOs fire in a 1.2 s stall"
