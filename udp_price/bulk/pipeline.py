"""Bulk quotes from a CSV: streaming, pipelined, batched, in input order, nothing lost.

Pure parts (row parsing in ``reader`` and ``chunks``, ordered output and the summary in
``results``) are plain functions and classes; ``run_bulk_chunks`` here is the asyncio pipeline
that drives a QuoteClient:

    read a chunk of rows -> validate -> group into batches of K -> up to W requests in flight
    -> results written in input order, a run at a time, as soon as the head of the file is answered

Reading runs in a thread (udp_price.bulk.feed.RowFeed), so a stalled input never delays a signal or a
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
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

from udp_price.bulk.chunks import row_chunks
from udp_price.bulk.feed import RowFeed
from udp_price.bulk.reader import Header, RecordReader, Row, read_header
from udp_price.bulk.results import (
    BAD_ROW,
    CLIENT_ERROR,
    FAILURE_STATUS,
    INTERRUPTED,
    NOT_ATTEMPTED,
    OK,
    OrderedWriter,
    RowResult,
    Sink,
    Summary,
)
from udp_price.client.api import NoAnswer, QuoteClient
from udp_price.errors import BulkInputError
from udp_price.wire import LineResult, Status
from wire_format import MAX_BATCH

__all__ = ["BulkInputError", "Header", "Row", "read_rows"]

BATCH_PATIENCE_S = 0.005
"""How long a partial batch waits for more rows from a pausing input before it is sent anyway."""
COPY_AHEAD = 1024
"""Rows read ahead while the rest of the file is copied after an interrupt."""
MAX_WINDOW = 1024
"""Largest --window: beyond it the burst, not the bound, decides memory and loss."""
AHEAD_BYTES = 8 * 1024 * 1024
"""Bytes of rows read but not yet written before reading pauses (as well as the row bound); a
row costs its input bytes plus ROW_OVERHEAD (its Python objects), about what it holds in memory."""


def read_rows(
    source: IO[bytes] | IO[str], encoding: str | None = None, delimiter: str = "auto"
) -> tuple[Header, Iterator[Row]]:
    """Header plus a lazy iterator of validated rows (see udp_price.bulk.reader for the reading rules).

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
    return header, (row for chunk in row_chunks(reader, header) for row in chunk)


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
    """``run_bulk_chunks`` for rows given one at a time (each row its own chunk, so the read-ahead
    bound counts exactly as before)."""
    chunks = ([row] for row in rows)
    return await run_bulk_chunks(chunks, client, sink, options, stop, progress, abandon, summary)


async def run_bulk_chunks(
    chunks: Iterator[list[Row]],
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
    after that (a second interrupt) = stop copying too: ``summary.abandoned_at`` says where.

    Rows come in chunks (``udp_price.bulk.chunks.row_chunks``): the reading thread hands over a
    chunk at a time and answered rows are written a run at a time, so the per-row work is a few
    list operations, not a queue hand-off, a lock and a write call each."""
    summary = summary if summary is not None else Summary()
    stop = stop or asyncio.Event()
    abandon = abandon or asyncio.Event()
    feed: RowFeed[Row] = RowFeed(chunks, options.ahead, options.ahead_bytes)
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
        batch: list[Row] = []
        unsent: list[Row] = []
        size = options.batch
        while not stop.is_set():
            got = feed.get_nowait() or await feed.get(stop, BATCH_PATIENCE_S if batch else None)
            if got is False:  # the input pauses (or the bound is reached): send the partial batch now
                await dispatch(batch)
                batch = []
                continue
            if got is None or got is True:
                break
            writer.next_line = writer.next_line or got[0].line  # nothing written yet: the first record's line
            await asyncio.sleep(0)  # let signals and replies in while the input streams in fast
            for i, row in enumerate(got):
                if stop.is_set():
                    unsent.extend(got[i:])
                    break
                if row.error:
                    writer.complete(row, RowResult(BAD_ROW, error=row.error))
                    continue
                batch.append(row)
                if len(batch) == size:
                    await dispatch(batch)
                    batch = []
        if batch and not stop.is_set():
            await dispatch(batch)
            batch = []
        await _finish(tasks, stop)
        canceller.cancel()
        if stop.is_set() and writer.error is None:
            _skip(writer, [*batch, *unsent])
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
    """The rest of the file as NOT_ATTEMPTED, a chunk at a time, never held (not validated: see
    rows_of), until the end of the input or ``abandon``."""
    interrupted = RowResult(NOT_ATTEMPTED, error="interrupted")
    feed.max_rows = min(feed.max_rows, COPY_AHEAD)  # copied rows are never held: read little ahead
    while writer.error is None:
        await asyncio.sleep(0)  # a second signal must get in even while the rows stream fast
        got = feed.get_nowait() or await feed.get(abandon)
        if not isinstance(got, list):
            if not feed.done:  # abandoned, not the end of the input
                summary.abandoned_at = writer.next_line
            break
        writer.complete_many(got, [interrupted] * len(got))
        summary.copied += len(got)


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
    if error is None:
        return  # _quote_chunk returned, so it completed every one of its rows (complete_many)
    # _quote_chunk catches everything; this is the last line of defence
    failed = RowResult(CLIENT_ERROR, error=f"internal error: {type(error).__name__}: {error}")
    for row in rows:
        if writer.pending(row):  # a row the task did not complete (it must never be lost)
            writer.complete(row, failed)


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
            outcomes = _outcomes(b.results, b.attempts, b.catalog_version)
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
    writer.complete_many(rows, outcomes)


def _cancelled(sent: bool) -> RowResult:
    if sent:
        return RowResult(INTERRUPTED, attempts=1, error="sent, then interrupted before an answer")
    return RowResult(NOT_ATTEMPTED, error="interrupted")


def _outcomes(lines: tuple[LineResult, ...], attempts: int, catalog_version: int) -> list[RowResult]:
    """_outcome of each line; OK lines (nearly all of them) made inline."""
    ok = Status.OK
    return [
        RowResult(OK, line.unit_price, line.total, attempts, "", catalog_version)
        if line.status is ok
        else _outcome(line, attempts, catalog_version)
        for line in lines
    ]


def _outcome(line: LineResult, attempts: int, catalog_version: int) -> RowResult:
    if line.status is Status.OK:
        return RowResult(OK, line.unit_price, line.total, attempts, catalog_version=catalog_version)
    unit = line.unit_price if line.status in (Status.BAD_QUANTITY, Status.OVERFLOW) else None
    why = line.status.name.lower().replace("_", " ")
    return RowResult(line.status.name, unit, None, attempts, why, catalog_version)
