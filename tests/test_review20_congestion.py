"""Review 20: Karn's rule in the congestion controller (pure)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from udp_price.client.congestion import CongestionConfig, CongestionController

RTT = 0.002


def primed() -> CongestionController:
    c = CongestionController(CongestionConfig(initial_window=8, max_window=64))
    t = 0.0
    for _ in range(20):  # a steady 2 ms path, window kept full
        t += RTT
        assert c.on_reply(t, [t - RTT], 1, busy=False, marked=False, in_flight=c.window - 1) is None
    return c


def test_an_unnumbered_reply_to_a_retransmitted_request_is_no_rtt_sample() -> None:
    """A list page is not numbered: after a retransmission its reply could answer either send
    (Karn). Taking the first send as its RTT (here 1 s, a timeout) reads a 1 s queue on a 2 ms
    path: a DELAY signal and the window cut, for a loss that was no congestion."""
    c = primed()
    window, samples = c.window, list(c._recent)
    now = 100 * RTT
    first, resent = now - 1.0, now - RTT
    assert c.on_reply(now, [first, resent], 0, busy=False, marked=False, in_flight=c.window - 1) is None
    assert c.window >= window, "no reduction for an ambiguous reply"
    assert list(c._recent) == samples, "no sample taken from an ambiguous reply"
    assert c.stats["cc.signals.delay"] == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 0.03), st.floats(0.0, 0.2)), min_size=1, max_size=300))
def test_the_standing_rtt_is_the_least_sample_still_in_the_horizon(steps: list[tuple[float, float]]) -> None:
    """The standing RTT is kept incrementally (a queue of rising minima) rather than by scanning the
    50 ms horizon on every answer: after any sequence of samples it must equal the least RTT among
    the samples the horizon still holds (RFC 6817's CURRENT_FILTER minimum)."""
    c = CongestionController(CongestionConfig(max_window=64))
    now = 0.0
    for gap, rtt in steps:
        now += gap
        c.on_answered(now, now - rtt, rtt, in_flight=0)
        assert c._rtt() == min(r for _, r in c._recent)
