"""Bulk under attack, end to end: every reviewer's reproduction kept as a test.

Each test makes its own input, runs ``udp_client.py bulk`` (or run_bulk in-process where the
fault must be injected into the pipeline) and checks the promise: one record out per record in,
in order, an explicit status for every row, the documented exit code, the summary, no traceback.
"""

from __future__ import annotations

import asyncio
import csv
import fcntl
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import pytest
import rootenv
from helpers import ROOT, RunningServer, expected_prices

from udp_price.bulk.pipeline import BulkOptions, read_rows, run_bulk
from udp_price.bulk.reader import Row
from udp_price.bulk.results import CsvSink, RowResult
from udp_price.bulk.writer import unique_keys
from udp_price.client.api import BatchResult, QuoteClient
from udp_price.wire import LineResult, Status

PRICES = expected_prices()
PY = sys.executable


def cmd(server: RunningServer | None, *args: str | Path) -> list[str]:
    where = f"{server.address[0]}:{server.address[1]}" if server else "127.0.0.1:9"
    return [PY, "udp_client.py", "--server", where, "bulk", "--no-progress", *map(str, args)]


def records(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


def no_traceback(err: bytes) -> str:
    text = err.decode("utf-8", "replace")
    assert "Traceback" not in text and "never retrieved" not in text, text[-2000:]
    return text


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def handles(pid: int, sig: int) -> bool:
    """Has process ``pid`` installed a handler for ``sig`` (SigCgt in /proc)?"""
    with open(f"/proc/{pid}/status") as f:
        caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    return bool(caught >> (sig - 1) & 1)


# ------------------------------------------------------------------ 1. no exception loses a row


@pytest.mark.parametrize("codec", ["utf-7", "unicode_escape", "raw_unicode_escape", "utf-16", "punycode", "rot13"])
def test_encodings_that_do_not_round_trip_are_refused(tmp_path: Path, codec: str) -> None:
    src = tmp_path / "in.csv"
    src.write_bytes(b"item,quantity,note\napple,1,+2ADYAA-\n")
    r = subprocess.run(cmd(None, src, "--encoding", codec), cwd=ROOT, capture_output=True, timeout=60)
    err = no_traceback(r.stderr)
    assert r.returncode == 2 and "--encoding" in err and r.stdout == b""


class FailingHeadClient:
    """Stands in for QuoteClient: the first batch raises an unexpected error, the rest answer."""

    server = ("127.0.0.1", 9)
    unreachable = False
    refused = 0

    def __init__(self) -> None:
        self.stats: Counter[str] = Counter()
        self.calls = 0

    def keep_unreachable_verdict(self) -> None:
        pass  # this stand-in never judges its server unreachable

    async def quote_batch(self, lines: list[tuple[str, int]]) -> BatchResult:
        self.calls += 1
        mine = self.calls
        await asyncio.sleep(0)
        if mine == 1:
            raise RuntimeError("boom")
        results = tuple(LineResult(Status.OK, PRICES[i], PRICES[i] * q) for i, q in lines)
        return BatchResult(tuple(lines), results, 1, self.calls, 0.001, 0)


def test_a_failing_task_costs_explicit_rows_not_a_hang() -> None:
    """The head batch raises with far more rows behind it than the read-ahead holds."""
    n = 3000
    text = "item,quantity\n" + "".join(f"apple,{i % 9 + 1}\n" for i in range(n))
    out = io.StringIO()

    async def run() -> None:
        header, rows = read_rows(io.StringIO(text))
        sink = CsvSink(out, header)
        client = cast(QuoteClient, FailingHeadClient())
        await asyncio.wait_for(run_bulk(rows, client, sink, BulkOptions(window=4, batch=2, max_ahead=50)), 60)

    asyncio.run(run())
    got = records(out.getvalue().encode())[1:]
    assert len(got) == n and [int(r[1]) for r in got] == [i % 9 + 1 for i in range(n)]
    assert [r[4] for r in got[:2]] == ["CLIENT_ERROR", "CLIENT_ERROR"]
    assert "RuntimeError: boom" in got[0][6]
    assert {r[4] for r in got[2:]} == {"OK"}


def test_lone_surrogate_is_a_bad_row_and_text_with_an_encoding_is_refused() -> None:
    out = io.StringIO()

    async def run() -> None:
        header, rows = read_rows(io.StringIO("item,quantity,note\napple,1,\ud800\napple,2,x\n"))

        client = FailingHeadClient()
        client.calls = 1  # no failure
        await run_bulk(rows, cast(QuoteClient, client), CsvSink(out, header), BulkOptions(batch=2))

    asyncio.run(run())
    got = records(out.getvalue().encode())[1:]
    assert [r[5] for r in got] == ["BAD_ROW", "OK"] and got[0][7].startswith("line 2: ")
    with pytest.raises(ValueError, match="already decoded"):
        read_rows(io.StringIO("item,quantity\n"), encoding="latin-1")


# ------------------------------------------------------------------ 2. non-blocking stdin


def test_non_blocking_stdin_loses_nothing(server: RunningServer) -> None:
    r, w = os.pipe()
    fcntl.fcntl(r, fcntl.F_SETFL, fcntl.fcntl(r, fcntl.F_GETFL) | os.O_NONBLOCK)
    proc = subprocess.Popen(cmd(server, "-"), cwd=ROOT, stdin=r, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.close(r)
    os.write(w, b"item,quantity\napple,1\nappl")
    wait_for(lambda: handles(proc.pid, signal.SIGTERM))  # reading has started: the header is in
    os.write(w, b"e,2\npear,3\n")
    os.close(w)
    out, err = proc.communicate(timeout=60)
    no_traceback(err)
    got = records(out)
    assert proc.returncode == 0, err
    assert [r[:3] for r in got[1:]] == [["apple", "1", "0.50"], ["apple", "2", "0.50"], ["pear", "3", got[3][2]]]
    assert [r[4] for r in got[1:]] == ["OK"] * 3


# ------------------------------------------------------- 3, 4, 9. stalled input, signals, SIGHUP


def start_piped(server: RunningServer, out: Path, *extra: str) -> subprocess.Popen[bytes]:
    """bulk reading a pipe we hold open; stderr goes to OUT.err (read it after the exit)."""
    err = out.with_suffix(".err").open("wb")
    proc = subprocess.Popen(
        cmd(server, "-", "-o", out, "--batch", "1", *extra), cwd=ROOT, stdin=subprocess.PIPE, stderr=err
    )
    assert proc.stdin is not None
    proc.stdin.write(b"item,quantity\n" + b"".join(f"apple,{i + 1}\n".encode() for i in range(10)))
    proc.stdin.flush()
    wait_for(lambda: handles(proc.pid, signal.SIGTERM))
    return proc


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT])
def test_a_stalled_input_does_not_delay_the_signal(server: RunningServer, tmp_path: Path, sig: int) -> None:
    """10 rows, then the input stalls (still open): the rows are answered while the read waits,
    the signal is handled at once, and every later row is copied as NOT_ATTEMPTED."""
    out = tmp_path / "out.csv"
    before = server.core.stats["replies"]
    proc = start_piped(server, out)
    wait_for(lambda: server.core.stats["replies"] >= before + 10)  # answered during the stall
    proc.send_signal(sig)
    proc.communicate(b"".join(f"pear,{i + 1}\n".encode() for i in range(10)), timeout=60)
    err = no_traceback(out.with_suffix(".err").read_bytes())
    assert proc.returncode == 130, err
    got = records(out.read_bytes())[1:]
    assert [r[0] for r in got] == ["apple"] * 10 + ["pear"] * 10
    # the server answered all 10 before the signal: each is OK, or INTERRUPTED if its answer was
    # still on its way (sent at least once) - never NOT_ATTEMPTED; the 10 read after it never went out
    assert set(r[4] for r in got[:10]) <= {"OK", "INTERRUPTED"}
    assert all(int(r[5]) >= 1 for r in got[:10])
    assert [r[4] for r in got[10:]] == ["NOT_ATTEMPTED"] * 10
    stopped = next(line for line in err.splitlines() if "stopped sending" in line)
    assert float(stopped.split("stopped sending ")[1].split(" s")[0]) < 1.0, stopped
    assert "rows=20 " in err


def test_second_signal_stops_copying_an_endless_input(server: RunningServer, tmp_path: Path) -> None:
    """Like ``tail -f | bulk -``: the input never ends; a second SIGINT ends the run (exit 130) and
    says from which input line on nothing was copied."""
    out = tmp_path / "out.csv"
    proc = start_piped(server, out)
    proc.send_signal(signal.SIGINT)
    assert proc.stdin is not None
    proc.stdin.write(b"pear,1\npear,2\n")
    proc.stdin.flush()
    proc.send_signal(signal.SIGTERM)  # another signal number: two SIGINTs in a row may merge into one
    proc.wait(timeout=60)  # stdin stays open: only the second signal ends it
    err = no_traceback(out.with_suffix(".err").read_bytes())
    assert proc.returncode == 130, err
    line = next(x for x in err.splitlines() if "nothing was copied from input line" in x)
    first_missing = int(line.split("input line ")[1].split()[0])
    got = records(out.read_bytes())[1:]
    assert len(got) == first_missing - 2  # one record per line 2 .. first_missing - 1, none after
    assert [r[0] for r in got] == (["apple"] * 10 + ["pear"] * 2)[: len(got)]
    proc.stdin.close()


# ------------------------------------------------------------------ 5. the output never eats the input


def test_same_file_through_overlayfs_is_safe(server: RunningServer, tmp_path: Path) -> None:
    rootenv.need_root("mounting overlayfs")
    lower, upper, work, merged = (tmp_path / d for d in ("lower", "upper", "work", "merged"))
    for d in (lower, upper, work, merged):
        d.mkdir()
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
    m = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)], capture_output=True)
    if m.returncode != 0:
        rootenv.cannot_run(f"cannot mount overlayfs here: {m.stderr.decode().strip()}")
    try:
        rows = [f"apple,{i % 9 + 1},{'x' * 50}" for i in range(5000)]
        (upper / "in.csv").write_text("item,quantity,note\n" + "".join(r + "\n" for r in rows))
        r = subprocess.run(cmd(server, merged / "in.csv", "-o", upper / "in.csv"), cwd=ROOT, capture_output=True)
        no_traceback(r.stderr)
        got = records((upper / "in.csv").read_bytes())
        assert r.returncode == 0, r.stderr
        assert [",".join(g[:3]) for g in got[1:]] == rows and {g[5] for g in got[1:]} == {"OK"}
    finally:
        subprocess.run(["umount", str(merged)], check=False)


# ------------------------------------------------------------------ 6, 7. linear, bounded


def test_jsonl_duplicate_columns_are_linear(server: RunningServer, tmp_path: Path) -> None:
    n = 4000
    src = tmp_path / "dup.csv"
    src.write_text("item,quantity," + ",".join(["x"] * n) + "\napple,1," + ",".join(["v"] * n) + "\n")
    r = subprocess.run(cmd(server, src, "--format", "jsonl"), cwd=ROOT, capture_output=True, timeout=60)
    no_traceback(r.stderr)
    rec = json.loads(r.stdout)
    assert r.returncode == 0 and rec["x"] == "v" and rec[f"x_{n}"] == "v" and rec["status"] == "OK"
    assert unique_keys(["a", "a", "a_2", "a"]) == ["a", "a_3", "a_2", "a_4"]


def test_read_ahead_is_bounded_in_bytes() -> None:
    """32 KB rows behind a head that answers late: at most max_ahead_bytes of input is held."""
    width, budget = 32_000, 1_000_000
    text = "item,quantity,note\n" + "".join(f"apple,{i % 9 + 1},{'x' * width}\n" for i in range(300))
    written = worst = consumed = 0

    class Sink:
        def write(self, row: Row, outcome: RowResult) -> None:
            nonlocal written
            written += 1

    async def run() -> None:
        nonlocal consumed, worst
        _, rows = read_rows(io.StringIO(text))

        def counting() -> Iterator[Row]:
            nonlocal consumed, worst
            for row in rows:
                consumed += 1
                worst = max(worst, consumed - written)
                yield row

        class SlowHeadClient(FailingHeadClient):
            async def quote_batch(self, lines: list[tuple[str, int]]) -> BatchResult:
                self.calls += 1
                await asyncio.sleep(0.3 if self.calls == 1 else 0)  # the head holds everything behind it
                results = tuple(LineResult(Status.OK, PRICES[i], PRICES[i] * q) for i, q in lines)
                return BatchResult(tuple(lines), results, 1, self.calls, 0.001, 0)

        options = BulkOptions(max_ahead_bytes=budget)
        await run_bulk(counting(), cast(QuoteClient, SlowHeadClient()), Sink(), options)

    asyncio.run(run())
    assert written == 300 and worst <= budget // width + 2, worst


# ------------------------------------------------------------------ 8, 10, 11. flags, fds, line ends


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--window", "999999999", "--window must be 1 to 1024"),
        ("--retries", "1000", "--retries must be at most 100"),
        ("--timeout", "1000", "--timeout must be at most 60 s"),
    ],
)
def test_numeric_flags_are_bounded(tmp_path: Path, flag: str, value: str, message: str) -> None:
    args = (
        cmd(None, "-", flag, value) if flag == "--window" else [*cmd(None, "-")[:2], flag, value, *cmd(None, "-")[2:]]
    )
    r = subprocess.run(args, cwd=ROOT, input=b"item,quantity\n", capture_output=True, timeout=60)
    assert r.returncode == 2 and message in no_traceback(r.stderr)


def test_closed_standard_streams(tmp_path: Path) -> None:
    src = tmp_path / "s.csv"
    src.write_text("item,quantity\napple,1\n")
    shell = " ".join(cmd(None, "-"))
    r = subprocess.run(["sh", "-c", f"exec {shell} <&-"], cwd=ROOT, capture_output=True, timeout=60)
    assert r.returncode == 2 and "stdin: is closed" in no_traceback(r.stderr)
    shell = " ".join(cmd(None, src))
    r = subprocess.run(["sh", "-c", f"exec {shell} >&-"], cwd=ROOT, stderr=subprocess.PIPE, timeout=60)
    assert r.returncode == 4 and "stdout: is closed" in no_traceback(r.stderr)


@pytest.mark.parametrize("end", [b"\r", b"\n", b"\r\n"])
def test_cr_lf_and_crlf_record_ends(server: RunningServer, tmp_path: Path, end: bytes) -> None:
    src = tmp_path / "in.csv"
    src.write_bytes(end.join([b"item,quantity,note", b'apple,1,"two' + end + b'lines"', b"pear,2,x", b""]))
    r = subprocess.run(cmd(server, src), cwd=ROOT, capture_output=True, timeout=60)
    no_traceback(r.stderr)
    got = records(r.stdout)[1:]
    assert r.returncode == 0, r.stderr
    assert [g[:3] for g in got] == [["apple", "1", "two" + end.decode() + "lines"], ["pear", "2", "x"]]


def test_full_disk_counts_the_rows_that_reached_the_file(server: RunningServer, tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("item,quantity\n" + "apple,1\n" * 3)
    r = subprocess.run(cmd(server, src, "-o", "/dev/full"), cwd=ROOT, capture_output=True, timeout=60)
    err = no_traceback(r.stderr)
    assert r.returncode == 4 and "rows=3 written=0 " in err and "0 of 3 rows reached it" in err
