"""The ``bulk`` command's shell: open input and output, run the pipeline under signals and a
progress bar, then one line per problem, the summary, and the documented exit code.

Every OSError at open, read, write, flush or close ends here as one line naming the file and
the step, followed by the summary; never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import signal
import stat
import sys
import time
from collections import Counter
from collections.abc import Iterator

from udp_price.bulk.chunks import row_chunks
from udp_price.bulk.feed import ChunkLines, fd_read
from udp_price.bulk.pipeline import BulkOptions, run_bulk_chunks
from udp_price.bulk.progress import ProgressBar, Snapshot
from udp_price.bulk.reader import Header, RecordReader, check_encoding, read_header
from udp_price.bulk.results import CsvSink, JsonlSink, Sink, Summary
from udp_price.bulk.writer import Output, open_output
from udp_price.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_NO_ANSWER,
    EXIT_OK,
    EXIT_OUTPUT,
    EXIT_STATUS,
    EXIT_USAGE,
    json_failure,
    policy_from_args,
)
from udp_price.client.api import QuoteClient
from udp_price.client.congestion import CongestionConfig
from udp_price.client.recovery import RetryBudget
from udp_price.errors import BulkInputError

# --timeout and --deadline are bounded for every subcommand by the parser (cli.common).
# Bounds for the numeric flags (exit 2 beyond): past these a typo, not a wish, is more likely,
# and the memory or the wait they would cost is not bounded by anything else.
MAX_RETRIES = 100
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
"""All end a run the same way: stop sending, write what answered, copy the rest as NOT_ATTEMPTED.
A second one stops the copy too (an input still being written, like ``tail -f``, has no end)."""


def fail(where: str, what: str) -> None:
    print(f"udp_client: {where}: {what}", file=sys.stderr)


def refused(args: argparse.Namespace, where: str, what: str, code: int) -> int:
    """A run refused before any row was written: the line on stderr and, under --json, one JSON
    object on stdout (status USAGE for exit 2, OUTPUT_ERROR for exit 4); returns the exit code."""
    fail(where, what)
    if args.json:
        with contextlib.suppress(OSError):  # stdout may be the very output that failed
            json_failure("USAGE" if code == EXIT_USAGE else "OUTPUT_ERROR", f"{where}: {what}")
    return code


def closed_standard_fds() -> set[int]:
    """Which of fds 0, 1, 2 were closed at start; each is pointed at /dev/null, so that nothing
    opened later (the input, the output) takes its number and is mistaken for it."""
    closed = set()
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.add(fd)
    if closed:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in closed - {null}:
            os.dup2(null, fd)
        if null not in closed:
            os.close(null)
        if 2 in closed or sys.stderr is None:
            sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the process)
    return closed


def check_flags(args: argparse.Namespace) -> BulkOptions:
    """The bulk options, or ValueError naming the flag out of its bound."""
    if args.retries > MAX_RETRIES:
        raise ValueError(f"--retries must be at most {MAX_RETRIES}")
    return BulkOptions(window=args.window, batch=args.batch)


def open_input(path: str) -> tuple[int, os.stat_result | None]:
    """The orders' file descriptor ('-' is stdin) and its stat (None when it cannot be taken)."""
    fd = 0 if path == "-" else os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return fd, os.fstat(fd)
    except OSError:
        return fd, None


class _Run:
    """What the progress bar reads while the pipeline runs."""

    def __init__(self, total_bytes: int | None) -> None:
        self.summary = Summary()
        self.stats: Counter[str] = Counter()
        self.sink: CsvSink | None = None
        self.total_bytes = total_bytes

    def seen(self, summary: Summary, stats: Counter[str]) -> None:
        self.summary, self.stats = summary, stats

    def snapshot(self) -> Snapshot:
        s = self.summary
        done = self.sink.done_bytes if self.sink is not None else 0
        return Snapshot(s.rows, s.attempted, s.ok, self.stats["retransmissions"], done, self.total_bytes, s.elapsed)


def run(args: argparse.Namespace) -> int:
    closed = closed_standard_fds()
    if 0 in closed and args.orders == "-":
        return refused(args, "stdin", "is closed: no input to read", EXIT_USAGE)
    if 1 in closed and args.output == "-":
        return refused(args, "stdout", "is closed: cannot write the output", EXIT_OUTPUT)
    try:
        options = check_flags(args)
        encoding = check_encoding(args.encoding)
    except (ValueError, BulkInputError) as e:
        return refused(args, "bulk", str(e), EXIT_USAGE)
    with contextlib.ExitStack() as stack:
        try:
            fd, input_stat = open_input(args.orders)
            if args.orders != "-":
                stack.callback(os.close, fd)
            reader = RecordReader(ChunkLines(fd_read(fd)), encoding)
            header = read_header(reader, args.delimiter)
        except BulkInputError as e:
            return refused(args, args.orders, str(e), EXIT_USAGE)
        except OSError as e:
            return refused(args, args.orders, f"cannot read: {e.strerror or e}", EXIT_USAGE)
        regular = input_stat is not None and stat.S_ISREG(input_stat.st_mode)
        state = _Run(input_stat.st_size if regular and input_stat is not None else None)
        bar = ProgressBar(sys.stderr, state.snapshot) if not args.no_progress and sys.stderr.isatty() else None
        try:
            output = open_output(args.output, input_stat, bar.clear if bar is not None else None)
        except BulkInputError as e:
            return refused(args, args.output, str(e), EXIT_USAGE)
        except OSError as e:
            return refused(args, args.output, f"cannot open for writing: {e.strerror or e}", EXIT_OUTPUT)
        try:
            kind = CsvSink if args.format == "csv" else JsonlSink
            sink = kind(output.write, header, output.write_records)
            output.uncount_last()  # the CSV header is not a row
        except OSError as e:  # the header row itself could not be written
            output.close(commit=False)
            return refused(args, output.name, f"cannot write: {e.strerror or e}", EXIT_OUTPUT)
        state.sink = sink
        try:
            with fewer_collections():
                interrupted = asyncio.run(_pipeline(args, reader, header, sink, options, state, bar))
        except Exception as e:  # a bug: still one line, the summary and an exit code, never a traceback
            state.summary.output_error = state.summary.output_error or e
            interrupted = False
        summary = state.summary
        if summary.abandoned_at is not None:
            stack.pop_all()  # the reader thread may still be in a read on it: leave it to the exit
        close_error = output.close(commit=summary.output_error is None)
    return _report(args, summary, state.stats, interrupted, reader, output, close_error)


@contextlib.contextmanager
def fewer_collections(gen0: int = 50_000) -> Iterator[None]:
    """Run with the cyclic GC's first generation collected every ``gen0`` allocations instead of
    CPython's 700. A bulk run allocates a handful of short-lived, acyclic objects per row (rows,
    results, texts), so the default threshold runs a collection every couple of chunks, each
    walking everything the read-ahead holds: ~10% of the client's CPU (profiled, 200,000 rows).
    Reference counting still frees every row at once; cycles are still collected, less often.
    The objects made at start-up are frozen out of the collections for the same reason."""
    before = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(gen0, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


async def _pipeline(
    args: argparse.Namespace,
    reader: RecordReader,
    header: Header,
    sink: Sink,
    options: BulkOptions,
    state: _Run,
    bar: ProgressBar | None,
) -> bool:
    """Run the pipeline into ``state.summary``; True if it was interrupted."""
    stop, abandon = asyncio.Event(), asyncio.Event()
    chunks = row_chunks(reader, header, stop.is_set)
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            abandon.set()
        else:
            state.summary.signalled = time.monotonic()
            stop.set()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal)
    ticker = asyncio.create_task(bar.run()) if bar is not None else None
    try:
        congestion = None if args.cc == "none" else CongestionConfig(max_window=args.window)
        async with QuoteClient(
            args.server, policy_from_args(args), RetryBudget(), key=args.key, congestion=congestion
        ) as client:
            state.stats = client.stats
            await run_bulk_chunks(chunks, client, sink, options, stop, state.seen, abandon, state.summary)
            return stop.is_set()
    finally:
        if ticker is not None:
            ticker.cancel()
        if bar is not None:
            bar.clear()


def _report(
    args: argparse.Namespace,
    summary: Summary,
    stats: Counter[str],
    interrupted: bool,
    reader: RecordReader,
    output: Output,
    close_error: OSError | None,
) -> int:
    write_error = summary.output_error or close_error
    if write_error is not None:
        step = "write" if summary.output_error is not None else "flush/close"
        fail(
            output.name,
            f"cannot write ({step}): {_why(write_error)}; the output is incomplete: "
            f"{output.records_written():,} of {summary.rows:,} rows reached it",
        )
        summary.written = output.records_written()
        if output.temp is not None:
            fail(output.name, f"left unchanged; the partial output is kept in {output.temp}")
        if output.name == "stdout":
            # Python flushes stdout again at exit; point it at /dev/null so that does not fail too.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno() if sys.stdout is not None else 1)
    if reader.read_error is not None:
        e = reader.read_error
        fail(args.orders, f"read error after line {reader.lines_read}: {e.strerror or e}; the rest was not read")
    if summary.input_error is not None:
        fail(args.orders, f"cannot read past line {reader.lines_read}: {_why(summary.input_error)}")
    if getattr(args, "verbosity", 0) >= 0:  # -q: only errors on stderr; every row's outcome is in the output
        for line in summary.lines(stats):
            print(f"udp_client: bulk: {line}", file=sys.stderr)
    if write_error is not None:
        return EXIT_OUTPUT
    if reader.read_error is not None or summary.input_error is not None:
        return EXIT_USAGE
    if interrupted:
        return EXIT_INTERRUPTED
    if summary.failed == 0:
        return EXIT_OK
    return EXIT_NO_ANSWER if stats["sent"] > 0 and stats["accepted"] == 0 else EXIT_STATUS


def _why(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return f"{type(e).__name__}: {e}"
