"""Review 20: the ordered bulk writer keeps a held row's first outcome (pure)."""

from __future__ import annotations

from udp_price.bulk.reader import Row
from udp_price.bulk.results import OrderedWriter, RowResult, Summary


class OutcomeSink:
    def __init__(self) -> None:
        self.written: list[tuple[int, str]] = []

    def write(self, row: Row, outcome: RowResult) -> None:
        self.written.append((row.seq, outcome.status))


def test_a_held_row_completed_twice_keeps_its_first_outcome() -> None:
    """complete_many: 'a row completed already is left as it is'. A row held behind a pending one
    (row 1 waits for row 0) may be completed again (a failure by deadline, then a late answer, or
    the reverse); what is written must be the first outcome, exactly once. The suite checks this
    only for rows already written, never for a held one."""
    sink, summary = OutcomeSink(), Summary()
    writer = OrderedWriter(sink, summary, lambda n, b: None, lambda e: None)
    rows = [Row(i, i + 2, ["apple", "1"]) for i in range(3)]
    writer.complete(rows[1], RowResult("FAILED", error="deadline"))
    assert not writer.pending(rows[1])
    writer.complete(rows[1], RowResult("OK", 50, 50, 1))
    writer.complete_many([rows[0], rows[2]], [RowResult("OK", 50, 50, 1)] * 2)
    assert sink.written == [(0, "OK"), (1, "FAILED"), (2, "OK")]
    assert summary.rows == 3
