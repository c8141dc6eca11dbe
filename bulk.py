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
import csv
import io
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from catalog import format_money
from retry import Outcome
from udp_client import NoAnswer, QuoteClient
from wire_format import ITEM_SIZE, MAX_BATCH, LineResult, Status, normalize_item

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


class BulkInputError(Exception):
    """The orders file itself is unusable (no header, no item/quantity column)."""


@dataclass(slots=True)
class Row:
    """One input row. ``error`` set means it is not sent; it is still written out."""

    seq: int
    line: int
    cells: list[str]
    item: str = ""
    quantity: int = 0
    error: str = ""


@dataclass(slots=True)
class RowResult:
    status: str
    unit_price: int | None = None
    total: int | None = None
    attempts: int = 0
    error: str = ""
    catalog_version: int | None = None


@dataclass
class Header:
    columns: list[str]
    item: int
    quantity: int


def parse_header(line: str) -> Header:
    columns = next(csv.reader([line], strict=True), [])
    names = [c.strip().lower() for c in columns]
    if "item" not in names or "quantity" not in names:
        raise BulkInputError(f"line 1: header must name 'item' and 'quantity' columns, got {columns}")
    return Header(columns, names.index("item"), names.index("quantity"))


def parse_row(header: Header, seq: int, line_no: int, text: str) -> Row:
    """Validate one physical line. Never raises: problems go into ``Row.error``."""
    try:
        cells = next(csv.reader([text], strict=True))
    except csv.Error as e:
        return Row(seq, line_no, _fit([text.rstrip("\r\n")], header), error=f"line {line_no}: broken CSV: {e}")
    row = Row(seq, line_no, _fit(cells, header))
    if len(cells) != len(header.columns):
        row.error = f"line {line_no}: expected {len(header.columns)} columns, got {len(cells)}"
        return row
    row.item = normalize_item(cells[header.item])
    quantity = cells[header.quantity].strip()
    size = len(row.item.encode("utf-8"))
    if not row.item:
        row.error = f"line {line_no}: missing item"
    elif "\0" in row.item:
        row.error = f"line {line_no}: item contains NUL"
    elif size > ITEM_SIZE:
        row.error = f"line {line_no}: item is {size} bytes in UTF-8; the wire field holds {ITEM_SIZE}"
    elif quantity.startswith("-") and quantity[1:].isdigit():
        row.error = f"line {line_no}: quantity {quantity} is negative"
    elif not quantity.isascii() or not quantity.isdigit():
        row.error = f"line {line_no}: quantity {quantity!r} is not a whole number"
    elif int(quantity) >= 2**32:
        row.error = f"line {line_no}: quantity {quantity} is too large"
    else:
        row.quantity = int(quantity)
    return row


def _fit(cells: list[str], header: Header) -> list[str]:
    """Cells padded or cut to the header's width, so every output row has the same columns."""
    width = len(header.columns)
    return (cells + [""] * width)[:width]


def read_rows(lines: Iterable[str]) -> tuple[Header, Iterator[Row]]:
    """Header plus a lazy iterator of rows. One physical line is one row; blank lines are skipped.

    Line by line (not one csv.reader over the file) so that one broken quote costs one row,
    not every row after it.
    """
    it = iter(enumerate(lines, start=1))
    for line_no, text in it:
        if text.strip():
            if line_no != 1:
                raise BulkInputError(f"line {line_no}: expected the header on line 1")
            header = parse_header(text)
            break
    else:
        raise BulkInputError("empty input: expected a header naming 'item' and 'quantity'")

    def rows() -> Iterator[Row]:
        seq = 0
        for line_no, text in it:
            if text.strip():
                yield parse_row(header, seq, line_no, text)
                seq += 1

    return header, rows()


# ---------------------------------------------------------------- output


class Sink(Protocol):
    def write(self, row: Row, outcome: RowResult) -> None: ...


class CsvSink:
    def __init__(self, out: IO[str], header: Header) -> None:
        self.writer = csv.writer(out, lineterminator="\n")
        self.writer.writerow([*header.columns, *RESULT_COLUMNS])

    def write(self, row: Row, outcome: RowResult) -> None:
        self.writer.writerow([*row.cells, *_result_cells(outcome)])


class JsonlSink:
    def __init__(self, out: IO[str], header: Header) -> None:
        self.out, self.columns = out, header.columns

    def write(self, row: Row, outcome: RowResult) -> None:
        record: dict[str, Any] = dict(zip(self.columns, row.cells, strict=True))
        record["line"] = row.line
        record.update(zip(RESULT_COLUMNS, _result_cells(outcome), strict=True))
        record["attempts"] = outcome.attempts
        record["catalog_version"] = outcome.catalog_version
        self.out.write(json.dumps(record, ensure_ascii=False) + "\n")


def _result_cells(o: RowResult) -> list[str]:
    money = [format_money(v) if v is not None else "" for v in (o.unit_price, o.total)]
    version = "" if o.catalog_version is None else str(o.catalog_version)
    return [*money, o.status, str(o.attempts), o.error, version]


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
    ok: int = 0
    grand_total: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    latencies: LatencyHistogram = field(default_factory=lambda: LatencyHistogram())
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    output_error: OSError | None = None

    def add(self, outcome: RowResult) -> None:
        self.rows += 1
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
        rate = self.rows / self.elapsed if self.elapsed > 0 else 0.0
        return [
            f"rows={self.rows} ok={self.ok} failed={self.failed} ({failed})",
            f"requests={client_stats['sent'] - client_stats['retransmissions']} "
            f"retransmissions={client_stats['retransmissions']} "
            f"duplicates_ignored={client_stats['ignored.duplicate']} other_replies_ignored="
            f"{ignored - client_stats['ignored.duplicate']}",
            f"latency p50={self.percentile_ms(0.5):.2f} ms p99={self.percentile_ms(0.99):.2f} ms; "
            f"{rate:,.0f} rows/s in {self.elapsed:.2f} s",
            f"grand total of ok rows: {format_money(self.grand_total)}",
        ]


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
    answered rows are written, everything else is written as NOT_ATTEMPTED."""
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

    async def dispatch(batch: list[Row]) -> None:
        await in_flight.acquire()
        task = asyncio.create_task(_quote_chunk(client, batch, options.batch, writer, summary))
        tasks.add(task)
        task.add_done_callback(lambda t: _retire(t, tasks, in_flight))

    for row in rows:
        if writer.error is not None:
            break  # nowhere to write the rest: stop reading
        if stop.is_set():
            writer.complete(row, RowResult(NOT_ATTEMPTED, error="interrupted"))
            continue
        await gate.take()
        if row.error:
            writer.complete(row, RowResult(BAD_ROW, error=row.error))
            continue
        chunk.append(row)
        if len(chunk) == options.batch:
            await dispatch(chunk)
            chunk = []
    if chunk and not stop.is_set():
        await dispatch(chunk)
    elif chunk:
        for row in chunk:
            writer.complete(row, RowResult(NOT_ATTEMPTED, error="interrupted"))
    await _finish(tasks, stop)
    summary.finished = time.monotonic()
    summary.output_error = writer.error
    return summary


def _retire(task: asyncio.Task[None], tasks: set[asyncio.Task[None]], in_flight: asyncio.Semaphore) -> None:
    tasks.discard(task)
    in_flight.release()


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


def open_text(path: str, stdin: IO[str]) -> IO[str]:
    """'-' is stdin; files are read as UTF-8 (a BOM is skipped), newlines kept for the csv module."""
    if path == "-":
        return io.TextIOWrapper(stdin.buffer, encoding="utf-8-sig", newline="") if hasattr(stdin, "buffer") else stdin
    return open(path, encoding="utf-8-sig", newline="")
