"""The ``bulk`` command's shell: open input and output, run the pipeline under signals and a
progress bar, then one line per problem, the summary, and the documented exit code.

Every OSError at open, read, write, flush or close ends here as one line naming the file and
the step, followed by the summary; never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import stat
import sys
from collections import Counter
from typing import IO

import bulk
from bulk_io import BulkInputError, Header, RecordReader, check_encoding, read_header, rows_of
from bulk_out import Output, open_output
from progress import ProgressBar, Snapshot
from udp_price.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_NO_ANSWER,
    EXIT_OK,
    EXIT_OUTPUT,
    EXIT_STATUS,
    EXIT_USAGE,
    policy_from_args,
)
from udp_price.client.api import QuoteClient
from udp_price.client.recovery import RetryBudget


def fail(where: str, what: str) -> None:
    print(f"udp_client: {where}: {what}", file=sys.stderr)


def open_input(path: str) -> tuple[IO[bytes], os.stat_result | None]:
    """The orders as bytes ('-' is stdin) and their stat (None when it cannot be taken)."""
    stream: IO[bytes] = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115 (closed by caller)
    try:
        return stream, os.fstat(stream.fileno())
    except (OSError, ValueError):
        return stream, None


class _Run:
    """What the progress bar reads while the pipeline runs."""

    def __init__(self, total_bytes: int | None) -> None:
        self.summary = bulk.Summary()
        self.stats: Counter[str] = Counter()
        self.sink: bulk.CsvSink | None = None
        self.total_bytes = total_bytes

    def seen(self, summary: bulk.Summary, stats: Counter[str]) -> None:
        self.summary, self.stats = summary, stats

    def snapshot(self) -> Snapshot:
        s = self.summary
        done = self.sink.done_bytes if self.sink is not None else 0
        return Snapshot(s.rows, s.attempted, s.ok, self.stats["retransmissions"], done, self.total_bytes, s.elapsed)


def run(args: argparse.Namespace) -> int:
    try:
        options = bulk.BulkOptions(window=args.window, batch=args.batch)
        encoding = check_encoding(args.encoding)
    except (ValueError, BulkInputError) as e:
        fail("bulk", str(e))
        return EXIT_USAGE
    with contextlib.ExitStack() as stack:
        try:
            source, input_stat = open_input(args.orders)
            if args.orders != "-":
                stack.callback(source.close)
            reader = RecordReader(source, encoding)
            header = read_header(reader, args.delimiter)
        except BulkInputError as e:
            fail(args.orders, str(e))
            return EXIT_USAGE
        except OSError as e:
            fail(args.orders, f"cannot read: {e.strerror or e}")
            return EXIT_USAGE
        regular = input_stat is not None and stat.S_ISREG(input_stat.st_mode)
        state = _Run(input_stat.st_size if regular and input_stat is not None else None)
        bar = ProgressBar(sys.stderr, state.snapshot) if not args.no_progress and sys.stderr.isatty() else None
        try:
            output = open_output(args.output, input_stat, bar.clear if bar is not None else None)
        except BulkInputError as e:
            fail(args.output, str(e))
            return EXIT_USAGE
        except OSError as e:
            fail(args.output, f"cannot open for writing: {e.strerror or e}")
            return EXIT_OUTPUT
        try:
            sink = bulk.CsvSink(output.text, header) if args.format == "csv" else bulk.JsonlSink(output.text, header)
        except OSError as e:  # the header row itself could not be written
            output.close()
            fail(output.name, f"cannot write: {e.strerror or e}")
            return EXIT_OUTPUT
        state.sink = sink
        summary, stats, interrupted = asyncio.run(_pipeline(args, reader, header, sink, options, state, bar))
        close_error = output.close()
    return _report(args, summary, stats, interrupted, reader, output, close_error)


async def _pipeline(
    args: argparse.Namespace,
    reader: RecordReader,
    header: Header,
    sink: bulk.Sink,
    options: bulk.BulkOptions,
    state: _Run,
    bar: ProgressBar | None,
) -> tuple[bulk.Summary, Counter[str], bool]:
    stop = asyncio.Event()
    rows = rows_of(reader, header, stop.is_set)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    ticker = asyncio.create_task(bar.run()) if bar is not None else None
    try:
        async with QuoteClient(args.server, policy_from_args(args), budget=RetryBudget()) as client:
            state.stats = client.stats
            summary = await bulk.run_bulk(rows, client, sink, options, stop, state.seen)
            return summary, client.stats, stop.is_set()
    finally:
        if ticker is not None:
            ticker.cancel()
        if bar is not None:
            bar.clear()


def _report(
    args: argparse.Namespace,
    summary: bulk.Summary,
    stats: Counter[str],
    interrupted: bool,
    reader: RecordReader,
    output: Output,
    close_error: OSError | None,
) -> int:
    write_error = summary.output_error or close_error
    if write_error is not None:
        step = "write" if summary.output_error is not None else "flush/close"
        fail(output.name, f"cannot write ({step}): {write_error.strerror or write_error}; the output is incomplete")
        if output.name == "stdout":
            # Python flushes stdout again at exit; point it at /dev/null so that does not fail too.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if reader.read_error is not None:
        e = reader.read_error
        fail(args.orders, f"read error after line {reader.lines_read}: {e.strerror or e}; the rest was not read")
    for line in summary.lines(stats):
        print(f"udp_client: bulk: {line}", file=sys.stderr)
    if write_error is not None:
        return EXIT_OUTPUT
    if reader.read_error is not None:
        return EXIT_USAGE
    if interrupted:
        return EXIT_INTERRUPTED
    if summary.failed == 0:
        return EXIT_OK
    return EXIT_NO_ANSWER if stats["sent"] > 0 and stats["accepted"] == 0 else EXIT_STATUS
