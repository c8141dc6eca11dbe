"""Progress bar (pure rendering and on a real terminal), the summary's rate, and the one quantity rule."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import pty
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers import ROOT, RunningServer, spawn

from udp_price.bulk.progress import Snapshot, duration, render, scaled
from udp_price.bulk.results import RowResult, Summary
from udp_price.client.api import QuoteClient
from udp_price.web import quote_for_page

PY = sys.executable


def test_scaled_units_and_durations() -> None:
    assert [scaled(n) for n in (0, 999, 1000, 12_345, 1_234_567, 3_000_000_000)] == [
        "0",
        "999",
        "1k",
        "12.3k",
        "1.23M",
        "3G",
    ]
    assert scaled(25_400_000, "B") == "25.4MB"
    assert [duration(s) for s in (0, 7.4, 754, 3723)] == ["0:00", "0:07", "12:34", "1:02:03"]


def test_render_with_a_total_shows_percent_sizes_and_eta() -> None:
    snap = Snapshot(
        rows_done=250_000,
        rows_attempted=240_000,
        ok=239_000,
        retransmissions=1200,
        done_bytes=5_000_000,
        total_bytes=20_000_000,
        elapsed_s=10.0,
    )
    line = render(snap, 200)
    assert (
        line == "[" + "#" * 8 + "." * 22 + "]  25% 5MB/20MB, 250k rows, ok 239k, retx 1.2k, 24k rows/s, 0:10, ETA 0:30"
    )
    # ETA: 10 s per 5 MB so far, 15 MB left; rows/s counts the rows sent (240k in 10 s)
    assert len(render(snap, 40)) == 39, "never wider than the terminal"


def test_render_from_a_pipe_has_no_total() -> None:
    line = render(Snapshot(10, 10, 10, 0, 300, None, 2.0), 120)
    assert line == "10 rows, ok 10, retx 0, 5 rows/s, 0:02, 300B read"


def test_summary_rate_counts_rows_attempted_only() -> None:
    s = Summary(started=0.0)
    for _ in range(10):
        s.add(RowResult("BAD_ROW"))
    for _ in range(4):
        s.add(RowResult("OK", 50, 50, attempts=1))
    s.add(RowResult("NOT_ATTEMPTED"))
    s.finished = 2.0
    assert "2 rows/s (4 rows sent) in 2.00 s" in s.lines(Counter())[2]


SUMMARY = "udp_client: bulk: "


def visible_lines(transcript: str) -> list[str]:
    """What a terminal shows: per line, the text after the last carriage return, erase codes removed."""
    lines = []
    for raw in transcript.split("\n"):
        text = raw.removesuffix("\r").split("\r")[-1].replace("\x1b[K", "")
        lines.append(text)
    return [line for line in lines if line]


def test_bar_on_a_terminal_never_glues_to_rows(server: RunningServer, tmp_path: Path) -> None:
    """stdout and stderr both the same terminal: the bar is redrawn on a timer and wiped before each row."""
    src = tmp_path / "orders.csv"
    src.write_text("id,item,quantity\n" + "".join(f"{i},apple,{i + 1}\n" for i in range(12)), "utf-8")
    host, port = server.address
    proxy, line = spawn(
        ["fault_proxy.py", "--listen", "127.0.0.1:0", "--upstream", f"{host}:{port}", "--delay", "0.1"], "fault_proxy:"
    )
    master, slave = pty.openpty()
    try:
        client = subprocess.Popen(
            [PY, "udp_client.py", "--server", line.split()[1], "bulk", str(src), "--batch", "1", "--window", "2"],
            cwd=ROOT,
            stdout=slave,
            stderr=slave,
            env={**os.environ, "COLUMNS": "150"},
        )
        os.close(slave)
        chunks: list[bytes] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the other side closed
                break
            if not data:
                break
            chunks.append(data)
        assert client.wait(timeout=30) == 0
    finally:
        os.close(master)
        proxy.terminate()
        proxy.communicate(timeout=10)
    transcript = b"".join(chunks).decode("utf-8")
    assert "Traceback" not in transcript
    shown = visible_lines(transcript)
    rows, summary = shown[:13], [line.removeprefix(SUMMARY) for line in shown[13:] if line.startswith(SUMMARY)]
    assert len(rows) + len(summary) == len(shown), "rows, then the summary, and no bar left over"
    assert not any("ETA" in line for line in shown), "no bar left over, nor glued to a row"
    assert rows[0] == "id,item,quantity,unit_price,total,status,attempts,error,catalog_version"
    version = server.core.catalog.version
    cells = [row.split(",") for row in rows[1:]]
    assert [c[:6] + c[7:] for c in cells] == [
        [str(i), "apple", str(i + 1), "0.50", f"{(i + 1) * 50 // 100}.{(i + 1) * 50 % 100:02d}", "OK", "", str(version)]
        for i in range(12)
    ]
    # A retransmission is no bar artefact: the attempts column and the summary account for it alike.
    retransmissions = sum(int(c[6]) - 1 for c in cells)
    assert summary[0] == "rows=12 ok=12 failed=0 (none)"
    counts = re.fullmatch(
        r"requests=12 retransmissions=(\d+) duplicates_ignored=(\d+) other_replies_ignored=0", summary[1]
    )
    assert counts is not None, summary[1]
    assert int(counts[1]) == retransmissions and int(counts[2]) <= retransmissions, (
        "a duplicate answers a retransmission"
    )
    assert summary[2].startswith("latency p50=") and summary[3] == "grand total of ok rows: 39.00"
    # One more line only when congestion control shrank its window: the scheduling delay of a
    # loaded machine is a delay signal (delay=1) that an idle one never gives.
    assert summary[4:] == [] or (len(summary) == 5 and summary[4].startswith("congestion window reductions: "))
    assert transcript.count("ETA") >= 2, "the bar was drawn, with an ETA, more than once"


# ------------------------------------------------------------------ one quantity rule everywhere

BAD = ["0", "-2", "+1", "1.5", "1e3", "1000000001", "9" * 5000, " "]


@pytest.mark.parametrize("text", BAD)
def test_quantity_rule_bulk_and_page(tmp_path: Path, text: str) -> None:
    src = tmp_path / "q.csv"
    src.write_text(f"item,quantity\napple,{text}\n", "utf-8")
    r = subprocess.run(
        [PY, "udp_client.py", "--server", "127.0.0.1:9", "bulk", str(src)], cwd=ROOT, capture_output=True, timeout=60
    )
    assert r.returncode == 1 and b"Traceback" not in r.stderr
    out = list(csv.reader(io.StringIO(r.stdout.decode("utf-8"))))[1]
    assert out[:2] == ["apple", text] and out[4:6] == ["BAD_ROW", "0"] and out[6].startswith("line 2: quantity ")
    from udp_price.client.kept import KeptClient
    from udp_price.client.retry import RetryPolicy

    page_client = KeptClient(("127.0.0.1", 9), RetryPolicy(deadline_s=0.5))
    try:
        result, error = quote_for_page(page_client, "apple", text)
    finally:
        page_client.close()
    assert result is None and error is not None and error.message.startswith("Bad quantity"), error
    assert (int(error.status), error.code) == (400, "bad_quantity")
    assert page_client.client.stats["sent"] == 0


@pytest.mark.parametrize("quantity", [0, -2, 1_000_000_001, 10**5000], ids=["0", "-2", "1e9+1", "5001-digits"])
def test_quantity_rule_python_api_sends_nothing(quantity: int) -> None:
    async def run() -> int:
        async with QuoteClient(("127.0.0.1", 9)) as client:
            with pytest.raises(ValueError, match="out of range"):
                await client.quote("apple", quantity)
            with pytest.raises(ValueError, match="out of range"):
                await client.quote_batch([("apple", 1), ("pear", quantity)])
            return client.stats["sent"]

    assert asyncio.run(run()) == 0
