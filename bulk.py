"""Bulk quotes from a CSV: streaming, pipelined, batched, in input order, nothing lost.

Pure parts (row parsing, ordered output, the summary) are plain functions and
classes; ``run_bulk`` is the asyncio pipeline that drives a QuoteClient:

    read a row -> validate -> group into batches of K -> up to W requests in flight
    -> results written in input order as soon as the head of the file is answered

Memory is bounded: reading stops while more than ``max_ahead`` rows are read but
not yet written, so a million-row file costs no more than a thousand-row one.
"""

from __future__ import annotations

import asyncio
import io
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Protocol

from bulk_io import BulkInputError, Header, RecordReader, Row, read_header, rows_of
from bulk_out import CsvRecords, JsonlRecords
from udp_price.catalog import format_money
from udp_price.client.api import NoAnswer, QuoteClient
from udp_price.client.retry import Outcome
from udp_price.wire import LineResult, Status
from wire_format import MAX_BATCH

__all__ = ["BulkInputError", "Header", "Row", "read_rows"]

RESULT_COLUMNS = ("unit_price", "total", "status", "attempts", "error", "catalog_version")
"""catalog_version: the server's catalog version that priced the row (empty when none did), so a
reload in the middle of a run is visible row by row."""
BAD_ROW = "BAD_ROW"
NOT_ATTEMPTED = "NOT_ATTEMPTED"
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


def read_rows(
    source: IO[bytes] | IO[str], encoding: str = "utf-8", delimiter: str = "auto"
) -> tuple[Header, Iterator[Row]]:
    """Header plus a lazy iterator of validated rows (see bulk_io for the reading rules).
    Text is accepted for convenience and read whole; bytes are streamed."""
    stream = io.BytesIO(source.read().encode("utf-8")) if isinstance(source, io.TextIOBase) else source
    reader = RecordReader(stream, encoding)  # type: ignore[arg-type]
    header = read_header(reader, delimiter)
    return header, rows_of(reader, header)


# ---------------------------------------------------------------- output


class Sink(Protocol):
    def write(self, row: Row, outcome: RowResult) -> None: ...


class CsvSink:
    def __init__(self, out: IO[str], header: Header) -> None:
        self.records: CsvRecords | JsonlRecords = CsvRecords(out, header, RESULT_COLUMNS)
        self.done_bytes = 0
        """Input bytes up to the end of the last row written (for progress)."""

    def write(self, row: Row, outcome: RowResult) -> None:
        self.records.write(row.cells, row.line, _result_cells(outcome))
        self.done_bytes = row.end


class JsonlSink(CsvSink):
    def __init__(self, out: IO[str], header: Header) -> None:
        self.records = JsonlRecords(out, header, RESULT_COLUMNS)
        self.done_bytes = 0


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
    output_error: OSError | None = None
    signalled: float | None = None
    """When ``stop`` was seen set (a signal, or the output failing)."""
    stopped: float | None = None
    """When, after that, the requests in flight were cancelled and every answered row written."""
    copied: int = 0
    """Rows streamed out as NOT_ATTEMPTED after the stop without being validated or held."""

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
        lines = [
            f"rows={self.rows} ok={self.ok} failed={self.failed} ({failed})",
            f"requests={client_stats['sent'] - client_stats['retransmissions']} "
            f"retransmissions={client_stats['retransmissions']} "
            f"duplicates_ignored={client_stats['ignored.duplicate']} other_replies_ignored="
            f"{ignored - client_stats['ignored.duplicate']}",
            f"latency p50={self.percentile_ms(0.5):.2f} ms p99={self.percentile_ms(0.99):.2f} ms; "
            f"{rate:,.0f} rows/s ({self.attempted} rows sent) in {self.elapsed:.2f} s",
            f"grand total of ok rows: {format_money(self.grand_total)}",
        ]
        if self.signalled is not None and self.stopped is not None:
            copy_s = (self.finished or self.stopped) - self.stopped
            lines.append(
                f"stopped sending {self.stopped - self.signalled:.2f} s after the interrupt; then copied the "
                f"remaining {self.copied:,} rows as NOT_ATTEMPTED in {copy_s:.2f} s"
            )
        return lines


class OrderedWriter:
    """Writes outcomes in input order; holds early finishers until the rows before them are done."""

    def __init__(
        self, sink: Sink, summary: Summary, on_flush: Callable[[int], None], on_error: Callable[[OSError], None]
    ) -> None:
        self.sink, self.summary, self.on_flush, self.on_error = sink, summary, on_flush, on_error
        self.next_seq = 0
        self.held: dict[int, tuple[Row, RowResult]] = {}
        self.error: OSError | None = None
        """Set when the output could not be written (disk full, closed pipe): the run stops."""

    def complete(self, row: Row, outcome: RowResult) -> None:
        self.held[row.seq] = (row, outcome)
        flushed = 0
        while self.next_seq in self.held:
            r, o = self.held.pop(self.next_seq)
            if self.error is None:
                try:
                    self.sink.write(r, o)
                except OSError as e:
                    self.error = e
                    self.on_error(e)
            self.summary.add(o)
            self.next_seq += 1
            flushed += 1
        if flushed:
            self.on_flush(flushed)


# ---------------------------------------------------------------- the pipeline


@dataclass(frozen=True)
class BulkOptions:
    window: int = 64
    """Requests in flight at once."""
    batch: int = 1
    """Lines per request: 1 sends single quote requests, 2..32 batch requests."""
    max_ahead: int = 0
    """Rows read but not yet written before reading pauses; 0 = max(window * batch * 4, 100000).
    Generous (rows cost about 0.4 KB each while held): a request lost twice holds up every row
    after it, and if reading stalls no new requests go out, so loss detection (which needs later
    requests answered) stalls too and only the timer is left. 20,000 cost 2% loss 27-47% of
    throughput in bench/bulk_bench.py; 100,000 cost it 13%."""

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError("--window must be at least 1")
        if not 1 <= self.batch <= MAX_BATCH:
            raise ValueError(f"--batch must be 1 to {MAX_BATCH}")

    @property
    def ahead(self) -> int:
        return self.max_ahead or max(self.window * self.batch * 4, 100_000)


class _Gate:
    """Counts rows read but not yet written; reading waits while the count is at the limit."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self.room = asyncio.Event()

    async def take(self) -> None:
        while self.used >= self.limit:
            self.room.clear()
            await self.room.wait()
        self.used += 1

    def give(self, n: int) -> None:
        self.used -= n
        self.room.set()


async def run_bulk(
    rows: Iterator[Row],
    client: QuoteClient,
    sink: Sink,
    options: BulkOptions,
    stop: asyncio.Event | None = None,
    progress: Callable[[Summary, Counter[str]], None] | None = None,
) -> Summary:
    """Quote every row, writing each exactly once, in order. ``stop`` set = interrupt cleanly:
    nothing more is sent, requests in flight are cancelled at once, answered rows are written,
    and the rest of the file is streamed out as NOT_ATTEMPTED in bounded memory."""
    summary = Summary()
    gate = _Gate(options.ahead)
    client.session.keep_verdict = True  # a silent server fails the rest of the file at once

    def flushed(n: int) -> None:
        gate.give(n)
        if progress is not None:
            progress(summary, client.stats)

    stop = stop or asyncio.Event()
    writer = OrderedWriter(sink, summary, flushed, lambda e: stop.set())
    in_flight = asyncio.Semaphore(options.window)
    tasks: set[asyncio.Task[None]] = set()
    chunk: list[Row] = []
    # Cancelling on the signal itself (not when the reading loop next looks) wakes a loop blocked
    # on the read-ahead gate or the window: the cancelled rows complete and free both.
    canceller = asyncio.create_task(_cancel_when(stop, tasks, summary))

    async def dispatch(batch: list[Row]) -> None:
        await in_flight.acquire()
        if stop.is_set():
            in_flight.release()
            _skip(writer, batch)
            return
        task = asyncio.create_task(_quote_chunk(client, batch, options.batch, writer, summary))
        tasks.add(task)
        task.add_done_callback(lambda t: _retire(t, batch, writer, tasks, in_flight))

    unsent: list[Row] = []
    for row in rows:
        if stop.is_set():
            unsent.append(row)
            break
        await gate.take()
        if stop.is_set():
            unsent.append(row)
            break
        if row.error:
            writer.complete(row, RowResult(BAD_ROW, error=row.error))
            continue
        chunk.append(row)
        if len(chunk) == options.batch:
            await dispatch(chunk)
            chunk = []
    if chunk and not stop.is_set():
        await dispatch(chunk)
        chunk = []
    await _finish(tasks, stop)
    canceller.cancel()
    if stop.is_set() and writer.error is None:
        _skip(writer, [*chunk, *unsent])
        summary.stopped = time.monotonic()
        interrupted = RowResult(NOT_ATTEMPTED, error="interrupted")
        for row in rows:  # the rest of the file, one row at a time, never held (not validated: see rows_of)
            if writer.error is not None:
                break
            writer.complete(row, interrupted)
            summary.copied += 1
    summary.finished = time.monotonic()
    summary.output_error = writer.error
    return summary


def _skip(writer: OrderedWriter, rows: list[Row]) -> None:
    for row in rows:
        if row.error:
            writer.complete(row, RowResult(BAD_ROW, error=row.error))
        else:
            writer.complete(row, RowResult(NOT_ATTEMPTED, error="interrupted"))


async def _cancel_when(stop: asyncio.Event, tasks: set[asyncio.Task[None]], summary: Summary) -> None:
    await stop.wait()
    summary.signalled = time.monotonic()
    for t in list(tasks):
        t.cancel()


def _retire(
    task: asyncio.Task[None],
    rows: list[Row],
    writer: OrderedWriter,
    tasks: set[asyncio.Task[None]],
    in_flight: asyncio.Semaphore,
) -> None:
    tasks.discard(task)
    in_flight.release()
    if task.cancelled():  # cancelled before it ever ran, so it could not write its rows itself
        _skip(writer, rows)


async def _finish(tasks: set[asyncio.Task[None]], stop: asyncio.Event) -> None:
    """Wait for the requests in flight, or cancel them when ``stop`` is set."""
    while tasks:
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({*tasks, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            for t in list(tasks):
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        stopper.cancel()


async def _quote_chunk(
    client: QuoteClient, rows: list[Row], batch: int, writer: OrderedWriter, summary: Summary
) -> None:
    outcomes: list[RowResult]
    try:
        if batch == 1:
            r = await client.quote(rows[0].item, rows[0].quantity)
            outcomes = [_outcome(LineResult(r.status, r.unit_price, r.total), r.attempts, r.catalog_version)]
            summary.latencies.append(r.latency_s)
        else:
            b = await client.quote_batch([(row.item, row.quantity) for row in rows])
            outcomes = [_outcome(line, b.attempts, b.catalog_version) for line in b.results]
            summary.latencies.append(b.latency_s)
    except NoAnswer as e:
        outcomes = [RowResult(FAILURE_STATUS.get(e.outcome, "NO_ANSWER"), attempts=e.attempts, error=str(e))] * len(
            rows
        )
    except asyncio.CancelledError:
        outcomes = [RowResult(NOT_ATTEMPTED, error="interrupted")] * len(rows)
    for row, outcome in zip(rows, outcomes, strict=True):
        writer.complete(row, outcome)


def _outcome(line: LineResult, attempts: int, catalog_version: int) -> RowResult:
    if line.status is Status.OK:
        return RowResult(OK, line.unit_price, line.total, attempts, catalog_version=catalog_version)
    unit = line.unit_price if line.status in (Status.BAD_QUANTITY, Status.OVERFLOW) else None
    why = line.status.name.lower().replace("_", " ")
    return RowResult(line.status.name, unit, None, attempts, why, catalog_version)
