"""A request-handling duration histogram cheap enough for the serving loop: fixed bucket bounds,
one bisect and two additions per datagram, no locks (the scrape thread copies the counts; a
scrape that races one observation is off by that one, which Prometheus tolerates)."""

from __future__ import annotations

from bisect import bisect_left

BOUNDS_S = (5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 0.1)
"""Upper bounds in seconds (le): handling one datagram takes microseconds; the top buckets catch
a garbage-collection pause or a reload's swap."""


class DurationHistogram:
    """Counts of durations per bucket (the last one is +Inf) and their sum, in seconds."""

    __slots__ = ("counts", "sum_s")

    def __init__(self) -> None:
        self.counts = [0] * (len(BOUNDS_S) + 1)
        self.sum_s = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BOUNDS_S, seconds)] += 1
        self.sum_s += seconds

    def cumulative(self) -> tuple[list[tuple[str, int]], float]:
        """Prometheus buckets [(le, cumulative count)], +Inf last, and the sum."""
        counts, total = list(self.counts), self.sum_s
        out: list[tuple[str, int]] = []
        running = 0
        for bound, count in zip((*(repr(b) for b in BOUNDS_S), "+Inf"), counts, strict=True):
            running += count
            out.append((bound, running))
        return out, total
