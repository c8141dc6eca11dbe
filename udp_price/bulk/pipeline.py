"""Bulk quotes from a CSV: streaming, pipelined, batched, in input order, nothing lost.

Pure parts (row parsing, ordered output, the summary) are plain functions and
classes; ``run_bulk`` is the asyncio pipeline that drives a QuoteClient:

    read a row -> validate -> group into batches of K -> up to W requests in flight
    -> results written in input order as soon as the head of the file is answered

Reading runs in a thread (bulk_feed.RowFeed), so a stalled input never delays a signal or a
reply. Memory is bounded: reading stops while more than ``max_ahead`` rows, or ``ahead_bytes``
input bytes, are read but not yet written, so a million-row file costs no more than a
thousand-row one, and 32 KB rows no more than a bounded number of bytes.

Nothing is lost, whatever fails: a request task that raises writes its rows with status
CLIENT_ERROR and the reason; a row the output cannot encode is written as a BAD_ROW; any other
failure to write is an output error that stops the run; every path ends with the summary.
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

from bulk_feed import RowFeed
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
INTERRUPTED = "INTERRUPTED"
"""Sent at least once, then the interrupt came before an answer was accepted (attempts >= 1)."""
CLIENT_ERROR = "CLIENT_ERROR"
"""The request failed inside this program (a bug, never the server's answer); ``error`` says why."""
BATCH_PATIENCE_S = 0.005
"""How long a partial batch waits for more rows from a pausing input before it is sent anyway."""
COPY_AHEAD = 1024
"""Rows read ahead while the rest of the file is copied after an interrupt."""
MAX_WINDOW = 1024
"""Largest --window: beyond it the burst, not the bound, decides memory and loss."""
AHEAD_BYTES = 8 * 1024 * 1024
"""Bytes of rows read but not yet written before reading pauses (as well as the row bound); a
row costs its input bytes plus ROW_OVERHEAD (its Python objects), about what it holds in memory."""
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
    source: IO[bytes] | IO[str], encoding: str | None = None, delimiter: str = "auto"
) -> tuple[Header, Iterator[Row]]:
    """Header plus a lazy iterator of validated rows (see bulk_io for the reading rules).

    Bytes are streamed and decoded with ``encoding`` (default utf-8). Text is already decoded:
    it is accepted for convenience and read whole, and giving an ``encoding`` with it is a
    ValueError (it could only mis-decode it)."""
    if isinstance(source, io.TextIOBase):
        if encoding is not None:
            raise ValueError("read_rows: encoding applies to a binary source; this text is already decoded")
        # surrogatepass: a lone surrogate in the text becomes a BAD_ROW line, not a crash
        stream: IO[bytes] = io.BytesIO(source.read().encode("utf-8", "surrogatepass"))
    else:
        stream = source  # type: ignore[assignment]
    reader = RecordReader(stream, encoding or "utf-8")
    header = read_header(reader, delimiter)
    return header, rows_of(reader, header)


# ---------------------------------------------------------------- output


class Sink(Protocol):
    def write(self, row: Row, outcome: RowResult) -> None: ...


class CsvSink:
    """Rows out as CSV through ``out`` (a text stream, or a function given one record's text)."""

    def __init__(self, out: IO[str] | Callable[[str], object], header: Header) -> None:
        self.records: CsvRecords | JsonlRecords = CsvRecords(_writer(out), header, RESULT_COLUMNS)
        self.done_bytes = 0
        """Input bytes up to the end of the last row written (for progress)."""

    def write(self, row: Row, outcome: RowResult) -> None:
        self.records.write(row.cells, row.line, _result_cells(outcome))
        self.done_bytes = row.end


class JsonlSink(CsvSink):
    def __init__(self, out: IO[str] | Callable[[str], object], header: Header) -> None:
        self.records = JsonlRecords(_writer(out), header, RESULT_COLUMNS)
        self.done_bytes = 0


def _writer(out: IO[str] | Callable[[str], object]) -> Callable[[str], object]:
    return out if callable(out) else out.write


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
        if not self.pending(row):
            return  # completed already (a failure path completing what a task had finished)
        self.held[row.seq] = (row, outcome)
        flushed = nbytes = 0
        while self.next_seq in self.held:
            r, o = self.held.pop(self.next_seq)
            if self.error is None:
                o = self._write(r, o)
            self.summary.add(o)
            self.next_seq += 1
            self.next_line = r.next_line
            flushed += 1
            nbytes += r.size
        if flushed:
            self.on_flush(flushed, nbytes)

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
        if not 1 <= self.window <= MAX_WINDOW:
            raise ValueError(f"--window must be 1 to {MAX_WINDOW}")
        if not 1 <= self.batch <= MAX_BATCH:
            raise ValueError(f"--batch must be 1 to {MAX_BATCH}")

    max_ahead_bytes: int = AHEAD_BYTES
    """Input bytes read but not yet written before reading pauses (fat rows: 30,000 rows of 32 KB
    would otherwise hold about 1 GB)."""

    @property
    def ahead(self) -> int:
        return self.max_ahead or max(self.window * self.batch * 4, 100_000)

    @property
    def ahead_bytes(self) -> int:
        return self.max_ahead_bytes


async def run_bulk(
    rows: Iterator[Row],
    client: QuoteClient,
    sink: Sink,
    options: BulkOptions,
    stop: asyncio.Event | None = None,
    progress: Callable[[Summary, Counter[str]], None] | None = None,
    abandon: asyncio.Event | None = None,
    summary: Summary | None = None,
) -> Summary:
    """Quote every row, writing each exactly once, in order. ``stop`` set = interrupt cleanly:
    nothing more is sent, requests in flight are cancelled at once, answered rows are written,
    and the rest of the file is streamed out as NOT_ATTEMPTED in bounded memory. ``abandon`` set
    after that (a second interrupt) = stop copying too: ``summary.abandoned_at`` says where."""
    summary = summary if summary is not None else Summary()
    stop = stop or asyncio.Event()
    abandon = abandon or asyncio.Event()
    feed: RowFeed[Row] = RowFeed(rows, options.ahead, options.ahead_bytes)
    client.keep_unreachable_verdict()  # a silent server fails the rest of the file at once

    def flushed(n: int, nbytes: int) -> None:
        feed.release(n, nbytes)
        if progress is not None:
            progress(summary, client.stats)

    writer = OrderedWriter(sink, summary, flushed, lambda e: stop.set())
    in_flight = asyncio.Semaphore(options.window)
    tasks: set[asyncio.Task[None]] = set()
    # Cancelling on the signal itself (not when the reading loop next looks) wakes a loop waiting
    # for the window: the cancelled rows complete and free it.
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

    feed.start()
    try:
        chunk: list[Row] = []
        unsent: list[Row] = []
        count = 0
        while not stop.is_set():
            row = feed.get_nowait() or await feed.get(stop, BATCH_PATIENCE_S if chunk else None)
            if row is False:  # the input pauses (or the bound is reached): send the partial batch now
                await dispatch(chunk)
                chunk = []
                continue
            if row is None or row is True:
                break
            count += 1
            writer.next_line = writer.next_line or row.line  # nothing written yet: the first record's line
            if count % 256 == 0:
                await asyncio.sleep(0)  # let signals and replies in while the input streams in fast
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
            await _copy_rest(feed, writer, summary, abandon)
    finally:
        feed.close()
        canceller.cancel()
    summary.input_error = feed.error
    summary.finished = time.monotonic()
    summary.output_error = writer.error
    return summary


async def _copy_rest(feed: RowFeed[Row], writer: OrderedWriter, summary: Summary, abandon: asyncio.Event) -> None:
    """The rest of the file as NOT_ATTEMPTED, one row at a time, never held (not validated: see
    rows_of), until the end of the input or ``abandon``."""
    interrupted = RowResult(NOT_ATTEMPTED, error="interrupted")
    feed.max_rows = min(feed.max_rows, COPY_AHEAD)  # copied rows are never held: read little ahead
    while writer.error is None:
        if summary.copied % 256 == 255:
            await asyncio.sleep(0)  # a second signal must get in even while the rows stream fast
        row = feed.get_nowait() or await feed.get(abandon)
        if not isinstance(row, Row):
            if not feed.done:  # abandoned, not the end of the input
                summary.abandoned_at = writer.next_line
            break
        writer.complete(row, interrupted)
        summary.copied += 1


def _skip(writer: OrderedWriter, rows: list[Row]) -> None:
    for row in rows:
        if row.error:
            writer.complete(row, RowResult(BAD_ROW, error=row.error))
        else:
            writer.complete(row, RowResult(NOT_ATTEMPTED, error="interrupted"))


async def _cancel_when(stop: asyncio.Event, tasks: set[asyncio.Task[None]], summary: Summary) -> None:
    await stop.wait()
    if summary.signalled is None:  # the signal handler notes the time itself; a write error does not
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
        return
    error = task.exception()  # retrieved here, so never "Task exception was never retrieved"
    if error is not None:  # _quote_chunk catches everything; this is the last line of defence
        failed = RowResult(CLIENT_ERROR, error=f"internal error: {type(error).__name__}: {error}")
    for row in rows:
        if writer.pending(row):  # a row the task did not complete (it must never be lost)
            writer.complete(row, failed if error is not None else RowResult(CLIENT_ERROR, error="not completed"))


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
    sent = False
    try:
        sent = True  # the client sends before it first waits: once this task runs past here, it was sent
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
        outcomes = [_cancelled(sent)] * len(rows)
    except Exception as e:  # a bug here must cost an explicit status, never a row
        why = f"internal error: {type(e).__name__}: {e}"
        outcomes = [RowResult(CLIENT_ERROR, attempts=int(sent), error=why)] * len(rows)
    for row, outcome in zip(rows, outcomes, strict=True):
        writer.complete(row, outcome)


def _cancelled(sent: bool) -> RowResult:
    if sent:
        return RowResult(INTERRUPTED, attempts=1, error="sent, then interrupted before an answer")
    return RowResult(NOT_ATTEMPTED, error="interrupted")


def _outcome(line: LineResult, attempts: int, catalog_version: int) -> RowResult:
    if line.status is Status.OK:
        return RowResult(OK, line.unit_price, line.total, attempts, catalog_version=catalog_version)
    unit = line.unit_price if line.status in (Status.BAD_QUANTITY, Status.OVERFLOW) else None
    why = line.status.name.lower().replace("_", " ")
    return RowResult(line.status.name, unit, None, attempts, why, catalog_version)
