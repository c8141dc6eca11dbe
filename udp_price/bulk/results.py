"""What the bulk pipeline produces: the result of each row, the sinks that write rows in input
order, the latency histogram and the run's summary. No sockets, no event loop: the pipeline
(``udp_price.bulk.pipeline``) drives these."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Protocol

from udp_price.bulk.reader import Header, Row
from udp_price.bulk.writer import CsvRecords, JsonlRecords
from udp_price.catalog import format_money
from udp_price.client.retry import Outcome
from udp_price.wire import Status

RESULT_COLUMNS = ("unit_price", "total", "status", "attempts", "error", "catalog_version")
"""catalog_version: the server's catalog version that priced the row (empty when none did), so a
reload in the middle of a run is visible row by row."""
BAD_ROW = "BAD_ROW"
NOT_ATTEMPTED = "NOT_ATTEMPTED"
INTERRUPTED = "INTERRUPTED"
"""Sent at least once, then the interrupt came before an answer was accepted (attempts >= 1)."""
CLIENT_ERROR = "CLIENT_ERROR"
"""The request failed inside this program (a bug, never the server's answer); ``error`` says why."""
OK = Status.OK.name
FAILURE_STATUS = {
    Outcome.TIMED_OUT: "NO_ANSWER",
    Outcome.DEADLINE: "DEADLINE",
    Outcome.REFUSED: "UNREACHABLE",
    Outcome.UNREACHABLE: "UNREACHABLE",
    Outcome.BUDGET: "RETRY_BUDGET",
    Outcome.VERSION: "UNSUPPORTED_VERSION",
}
"""Row status when no valid answer came, by why the client gave up."""


@dataclass(slots=True)
class RowResult:
    status: str
    unit_price: int | None = None
    total: int | None = None
    attempts: int = 0
    error: str = ""
    catalog_version: int | None = None


class Sink(Protocol):
    def write(self, row: Row, outcome: RowResult) -> None: ...


class CsvSink:
    """Rows out as CSV through ``out`` (a text stream, or a function given one record's text).

    ``write_many``, when given, takes many records' texts at once (``Output.write_records``):
    ``write_rows`` then costs one call for a whole run of rows instead of one per row. A stream
    takes them joined in one write. A plain function ``out`` is called once per row (``batched``
    is False): it could fail half-way through a run, and a row must never be written twice."""

    def __init__(
        self,
        out: IO[str] | Callable[[str], object],
        header: Header,
        write_many: Callable[[list[str]], object] | None = None,
    ) -> None:
        self.records: CsvRecords | JsonlRecords = CsvRecords(_writer(out), header, RESULT_COLUMNS)
        self._write_many = write_many or _many(out)
        self.batched = write_many is not None or not callable(out)
        self.done_bytes = 0
        """Input bytes up to the end of the last row written (for progress)."""

    def write(self, row: Row, outcome: RowResult) -> None:
        self.records.write(row.cells, row.line, _result_cells(outcome))
        self.done_bytes = row.end

    def write_rows(self, pairs: list[tuple[Row, RowResult]]) -> None:
        """Many rows in order; nothing is written if any of them cannot be (a UnicodeError then)."""
        money = _money_text
        texts = self.records.texts(
            [
                (
                    r.cells,
                    r.line,
                    [money(o.unit_price), money(o.total), o.status, o.attempts, o.error, o.catalog_version],
                )
                for r, o in pairs
            ]
        )
        self._write_many(texts)
        self.done_bytes = pairs[-1][0].end


class JsonlSink(CsvSink):
    def __init__(
        self,
        out: IO[str] | Callable[[str], object],
        header: Header,
        write_many: Callable[[list[str]], object] | None = None,
    ) -> None:
        self.records = JsonlRecords(_writer(out), header, RESULT_COLUMNS)
        self._write_many = write_many or _many(out)
        self.batched = write_many is not None or not callable(out)
        self.done_bytes = 0


def _writer(out: IO[str] | Callable[[str], object]) -> Callable[[str], object]:
    return out if callable(out) else out.write


def _many(out: IO[str] | Callable[[str], object]) -> Callable[[list[str]], object]:
    """Many records' texts through a one-record ``out``: a stream takes them joined (one write, which
    encodes before it writes), a function one by one."""
    if callable(out):
        return lambda texts: [out(t) for t in texts]
    return lambda texts: out.write("".join(texts))


_MONEY: dict[int, str] = {}
"""Texts of the amounts seen most (unit prices, small totals), bounded."""


def _money_text(minor: int | None) -> str | None:
    """format_money, or None (a blank cell) for what is not known; remembered for the amounts seen most."""
    if minor is None:
        return None
    text = _MONEY.get(minor)
    if text is None:
        text = format_money(minor)
        if len(_MONEY) >= 65536:
            _MONEY.clear()
        _MONEY[minor] = text
    return text


def _result_cells(o: RowResult) -> list[object]:
    """Result values in RESULT_COLUMNS order; None for what is not known (blank in CSV, null in JSON)."""
    money = [format_money(v) if v is not None else None for v in (o.unit_price, o.total)]
    return [*money, o.status, o.attempts, o.error, o.catalog_version]


class LatencyHistogram:
    """Percentiles in constant memory: log-spaced buckets 1% wide, from 1 us up.

    A million-row run keeps a few hundred counters instead of a million floats.
    """

    RATIO = 1.01
    FLOOR_S = 1e-6

    def __init__(self) -> None:
        self.buckets: Counter[int] = Counter()
        self.count = 0

    def append(self, seconds: float) -> None:
        self.buckets[int(math.log(max(seconds, self.FLOOR_S) / self.FLOOR_S, self.RATIO))] += 1
        self.count += 1

    def percentile(self, q: float) -> float:
        """Upper edge of the bucket holding the q-quantile, in seconds (0.0 when empty)."""
        if not self.count:
            return 0.0
        rank, seen = q * self.count, 0
        for bucket in sorted(self.buckets):
            seen += self.buckets[bucket]
            if seen >= rank:
                return self.FLOOR_S * self.RATIO ** (bucket + 1)
        return self.FLOOR_S * self.RATIO ** (max(self.buckets) + 1)


@dataclass
class Summary:
    rows: int = 0
    attempted: int = 0
    """Rows sent to the server at least once (not BAD_ROW, not NOT_ATTEMPTED, not failed unsent)."""
    ok: int = 0
    grand_total: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    latencies: LatencyHistogram = field(default_factory=lambda: LatencyHistogram())
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    output_error: BaseException | None = None
    """Why the output could not be written (an OSError, or anything else a write raised)."""
    input_error: BaseException | None = None
    """An unexpected failure of the reader (not a read error: RecordReader keeps those)."""
    abandoned_at: int | None = None
    """After a second interrupt: the input line from which on nothing was copied."""
    signalled: float | None = None
    """When ``stop`` was seen set (a signal, or the output failing)."""
    stopped: float | None = None
    """When, after that, the requests in flight were cancelled and every answered row written."""
    written: int | None = None
    """Rows that actually reached the output, when it failed (the rest were processed, not written)."""
    copied: int = 0
    """Rows streamed out as NOT_ATTEMPTED after the stop without being validated or held."""

    def add_many(self, outcomes: list[RowResult]) -> None:
        """``add`` for each outcome, with the counters updated once."""
        by_status: Counter[str] = Counter()
        attempted = ok = total = 0
        for o in outcomes:
            by_status[o.status] += 1
            attempted += o.attempts > 0
            if o.status == OK and o.total is not None:
                ok += 1
                total += o.total
        self.rows += len(outcomes)
        self.attempted += attempted
        self.ok += ok
        self.grand_total += total
        self.by_status.update(by_status)

    def add(self, outcome: RowResult) -> None:
        self.rows += 1
        self.attempted += outcome.attempts > 0
        self.by_status[outcome.status] += 1
        if outcome.status == OK and outcome.total is not None:
            self.ok += 1
            self.grand_total += outcome.total

    @property
    def failed(self) -> int:
        return self.rows - self.ok

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    def percentile_ms(self, q: float) -> float:
        return self.latencies.percentile(q) * 1000

    def lines(self, client_stats: Counter[str]) -> list[str]:
        failed = ", ".join(f"{k}={v}" for k, v in sorted(self.by_status.items()) if k != OK) or "none"
        ignored = sum(v for k, v in client_stats.items() if k.startswith("ignored."))
        sending = (self.stopped or self.finished or time.monotonic()) - self.started
        rate = self.attempted / sending if sending > 0 else 0.0
        written = f" written={self.written}" if self.written is not None else ""
        lines = [
            f"rows={self.rows}{written} ok={self.ok} failed={self.failed} ({failed})",
            f"requests={client_stats['sent'] - client_stats['retransmissions']} "
            f"retransmissions={client_stats['retransmissions']} "
            f"duplicates_ignored={client_stats['ignored.duplicate']} other_replies_ignored="
            f"{ignored - client_stats['ignored.duplicate']}",
            f"latency p50={self.percentile_ms(0.5):.2f} ms p99={self.percentile_ms(0.99):.2f} ms; "
            f"{rate:,.0f} rows/s ({self.attempted} rows sent) in {self.elapsed:.2f} s",
            f"grand total of ok rows: {format_money(self.grand_total)}",
        ]
        if (
            client_stats["cc.reductions.mark"]
            + client_stats["cc.reductions.busy"]
            + client_stats["cc.reductions.delay"]
        ):
            lines.append(
                f"congestion window reductions: overload mark={client_stats['cc.reductions.mark']} "
                f"busy={client_stats['cc.reductions.busy']} delay={client_stats['cc.reductions.delay']} "
                f"(overload marks seen={client_stats['cc.signals.mark']})"
            )
        if self.signalled is not None and self.stopped is not None:
            copy_s = (self.finished or self.stopped) - self.stopped
            copied = "the remaining" if self.abandoned_at is None else "then"
            lines.append(
                f"stopped sending {self.stopped - self.signalled:.2f} s after the interrupt; then copied {copied} "
                f"{self.copied:,} rows as NOT_ATTEMPTED in {copy_s:.2f} s"
            )
        if self.abandoned_at is not None:
            lines.append(
                f"second interrupt: stopped copying; nothing was copied from input line {self.abandoned_at} on"
            )
        return lines


class OrderedWriter:
    """Writes outcomes in input order; holds early finishers until the rows before them are done."""

    def __init__(
        self,
        sink: Sink,
        summary: Summary,
        on_flush: Callable[[int, int], None],
        on_error: Callable[[BaseException], None],
    ) -> None:
        self.sink, self.summary, self.on_flush, self.on_error = sink, summary, on_flush, on_error
        self.next_seq = 0
        self.next_line = 0
        """The input line after the last row written (0: none yet)."""
        self.held: dict[int, tuple[Row, RowResult]] = {}
        self.error: BaseException | None = None
        """Set when the output could not be written (disk full, closed pipe): the run stops."""

    def pending(self, row: Row) -> bool:
        """Is ``row`` neither written nor held (so whoever owns it must still complete it)?"""
        return row.seq >= self.next_seq and row.seq not in self.held

    def complete(self, row: Row, outcome: RowResult) -> None:
        self.complete_many([row], [outcome])

    def complete_many(self, rows: list[Row], outcomes: list[RowResult]) -> None:
        """Complete each row with its outcome (a row completed already is left as it is), then
        write every row now at the head of the input, in order, as one run."""
        held, next_seq = self.held, self.next_seq
        run: list[tuple[Row, RowResult]]
        if not held and rows and rows[0].seq == next_seq and rows[-1].seq == next_seq + len(rows) - 1:
            run = list(zip(rows, outcomes, strict=True))  # the head of the input, in one piece (the usual case)
            next_seq += len(rows)
        else:
            for row, outcome in zip(rows, outcomes, strict=True):
                if row.seq >= next_seq and row.seq not in held:
                    held[row.seq] = (row, outcome)
            run = []
            while next_seq in held:
                run.append(held.pop(next_seq))
                next_seq += 1
        if not run:
            return
        self.next_seq = next_seq
        written = self._write_run(run) if self.error is None else [o for _, o in run]
        self.summary.add_many(written)
        self.next_line = run[-1][0].next_line
        self.on_flush(len(run), sum(r.size for r, _ in run))

    def _write_run(self, run: list[tuple[Row, RowResult]]) -> list[RowResult]:
        """Write rows in order, at once when the sink can; the outcomes as written."""
        write_rows = getattr(self.sink, "write_rows", None) if getattr(self.sink, "batched", False) else None
        if write_rows is not None:
            try:
                write_rows(run)
                return [o for _, o in run]
            except UnicodeError:
                pass  # nothing was written: each row again on its own, the one that fails as a BAD_ROW
            except Exception as e:  # the output is broken (as in _write)
                self.error = e
                self.on_error(e)
                return [o for _, o in run]
        written = []
        for r, o in run:
            written.append(self._write(r, o) if self.error is None else o)
        return written

    def _write(self, row: Row, outcome: RowResult) -> RowResult:
        """Write one row; the outcome as written (a BAD_ROW if the output cannot hold a cell)."""
        try:
            try:
                self.sink.write(row, outcome)
            except UnicodeError as e:  # a cell the output encoding cannot hold (a lone surrogate)
                safe = [c.encode("utf-8", "backslashreplace").decode("utf-8") for c in row.cells]
                why = f"line {row.line}: a cell cannot be written ({e}); its cells are kept with \\u escapes"
                outcome = RowResult(BAD_ROW, attempts=outcome.attempts, error=why)
                self.sink.write(Row(row.seq, row.line, safe, end=row.end, size=row.size), outcome)
        except Exception as e:  # OSError (disk full, closed pipe) or anything else: the output is broken
            self.error = e
            self.on_error(e)
        return outcome
