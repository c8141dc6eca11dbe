"""The server's log lines: text with ISO 8601 timestamps, or one JSON object per line, on stderr;
and the start and stop lines, which keep stdout machine-readable in either format."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, event, msg, and any structured extras."""

    EXTRAS = ("event", "problems", "items", "version", "counters")

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", "log"),
            "msg": record.getMessage(),
        }
        for key in self.EXTRAS[1:]:
            if hasattr(record, key):
                out[key] = getattr(record, key)
        return json.dumps(out, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``2026-11-27T10:57:56.123+00:00 udp_server: INFO message``: ISO 8601 time in UTC, so lines
    from several hosts and journald sort and compare without guessing a time zone."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s udp_server: %(levelname)s %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return iso_time(record.created)


def iso_time(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")


def announce(text: str, fmt: str, event: str, **fields: Any) -> None:
    """The start and stop lines. Text format: the line on stdout, as scripts have always read it.
    JSON format: stdout carries only JSON lines, so the line goes out as one JSON object there
    (``msg`` holds the text); stderr stays JSON too (the log records)."""
    if fmt == "json":
        line = json.dumps(
            {"ts": round(time.time(), 3), "level": "info", "event": event, "msg": text, **fields}, ensure_ascii=False
        )
    else:
        line = text
    try:
        print(line, flush=True)
    except OSError:  # stdout's reader is gone ('| head') or it is full: the server goes on regardless
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("udp_price")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
