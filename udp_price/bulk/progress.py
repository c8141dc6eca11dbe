"""The bulk command's progress bar: one line on stderr, redrawn on a timer.

``render`` is pure (counters and elapsed seconds in, a line out). ``ProgressBar`` is the shell:
it redraws every ``interval_s`` from a timer (so the line moves while the last rows are being
retransmitted), writes only to stderr, and ``clear()`` wipes the line before anything goes to
stdout, so the bar never glues itself to an output row when both are the same terminal.

With a regular input file the total is the file's size in bytes and the ETA is the time per byte
so far times the bytes left; from a pipe there is no total, only counts and the rate.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

CLEAR_LINE = "\r\x1b[K"


@dataclass(frozen=True)
class Snapshot:
    rows_done: int
    """Rows written."""
    rows_attempted: int
    """Rows sent to the server at least once."""
    ok: int
    retransmissions: int
    done_bytes: int
    """Input bytes up to the last row written."""
    total_bytes: int | None
    """Size of the input file; None when it is a pipe or a terminal."""
    elapsed_s: float


def scaled(n: float, unit: str = "", base: int = 1000) -> str:
    """3 significant digits with k/M/G: 999 -> '999', 12345 -> '12.3k', 1234567 -> '1.23M'."""
    for prefix in ("", "k", "M", "G", "T"):
        if abs(n) < 999.5 or prefix == "T":
            if prefix == "":
                return f"{n:.0f}{unit}"
            return f"{n:.3g}{prefix}{unit}"
        n /= base
    raise AssertionError("unreachable")


def duration(seconds: float) -> str:
    """'0:07', '12:34', '1:02:03'."""
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def render(s: Snapshot, width: int) -> str:
    """The bar as one line of at most ``width - 1`` characters (the last column would wrap)."""
    rate = s.rows_attempted / s.elapsed_s if s.elapsed_s > 0 else 0.0  # rows sent, not BAD_ROW or skipped
    counts = (
        f"{scaled(s.rows_done)} rows, ok {scaled(s.ok)}, retx {scaled(s.retransmissions)}, "
        f"{scaled(rate)} rows/s, {duration(s.elapsed_s)}"
    )
    if not s.total_bytes:
        line = f"{counts}, {scaled(s.done_bytes, 'B')} read"
    else:
        frac = min(1.0, s.done_bytes / s.total_bytes)
        eta = s.elapsed_s * (s.total_bytes - s.done_bytes) / s.done_bytes if s.done_bytes else None
        sizes = f"{scaled(s.done_bytes, 'B')}/{scaled(s.total_bytes, 'B')}"
        tail = f" {frac:4.0%} {sizes}, {counts}, ETA {duration(eta) if eta is not None else '?'}"
        bar_width = max(0, min(30, width - 1 - len(tail) - 2))
        filled = round(frac * bar_width)
        line = (f"[{'#' * filled}{'.' * (bar_width - filled)}]" if bar_width >= 5 else "") + tail
    return line[: max(0, width - 1)]


class ProgressBar:
    """Draws ``render(snapshot(now))`` on ``stream`` every ``interval_s`` while ``run`` is awaited."""

    def __init__(
        self, stream: IO[str], snapshot: Callable[[], Snapshot], interval_s: float = 0.25, width: int | None = None
    ) -> None:
        self.stream, self.snapshot, self.interval_s = stream, snapshot, interval_s
        self.width = width
        self.visible = False

    def draw(self) -> None:
        width = self.width or shutil.get_terminal_size((80, 24)).columns
        self.stream.write(CLEAR_LINE + render(self.snapshot(), width))
        self.stream.flush()
        self.visible = True

    def clear(self) -> None:
        """Wipe the bar (before stdout output, and at the end)."""
        if self.visible:
            self.stream.write(CLEAR_LINE)
            self.stream.flush()
            self.visible = False

    async def run(self) -> None:
        """Redraw on a timer until cancelled."""
        while True:
            self.draw()
            await asyncio.sleep(self.interval_s)
