"""What the tests share: the project paths, the independent price oracle, one way to run a command,
one free port, one server starter (subprocess or in-process thread)."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from udp_price.server.core import QuoteServer
from udp_price.server.loop import Control, bind_socket, serve

ROOT = Path(__file__).resolve().parent.parent
CATALOG = ROOT / "catalog.csv"
PY = sys.executable


def expected_prices() -> dict[str, int]:
    """Unit prices in cents straight from catalog.csv, without catalog.py: an independent oracle."""
    with CATALOG.open(encoding="utf-8", newline="") as f:
        return {row["item"]: int(Decimal(row["price"]) * 100) for row in csv.DictReader(f)}


def run_cli(*args: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` in the project directory (e.g. ``run_cli("udp_client.py", "quote", "apple", "1")``),
    UTF-8 on the pipes, output captured."""
    return subprocess.run(
        [PY, *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )


def free_port(kind: socket.SocketKind = socket.SOCK_DGRAM) -> int:
    """A loopback port free right now (UDP by default; pass SOCK_STREAM for TCP)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningServer:
    core: QuoteServer
    address: tuple[str, int]
    sock: socket.socket


def spawn(args: list[str], marker: str) -> tuple[subprocess.Popen[str], str]:
    """Start ``python ARGS`` in the project; return it and its first stdout line, which must contain marker."""
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert marker in line, f"{args[0]} did not start: {line!r}"
    return proc, line


def start_server(*args: str) -> tuple[subprocess.Popen[str], tuple[str, int]]:
    """``udp_server.py --port 0 ARGS``; returns it and the (host, port) its start line names."""
    proc, line = spawn(["udp_server.py", "--port", "0", *args], "listening on")
    host, _, port = line.split("listening on ")[1].split()[0].rpartition(":")
    return proc, (host.strip("[]"), int(port))


@contextmanager
def serving(core: QuoteServer) -> Iterator[RunningServer]:
    """Run ``core`` on 127.0.0.1:<free port> in a thread; stop it and check it stopped."""
    sock = bind_socket("127.0.0.1", 0)
    control = Control()
    thread = threading.Thread(target=serve, args=(sock, core, control), daemon=True)
    thread.start()
    try:
        yield RunningServer(core, sock.getsockname()[:2], sock)
    finally:
        control.stop()
        thread.join(timeout=5)
        assert not thread.is_alive(), "server thread did not stop"
        sock.close()
        control.close()


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    """Poll ``condition`` until it holds (instead of a fixed sleep); fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(0.01)


class LineWatcher:
    """Collects a process's stderr lines in a thread, so a test can wait for a log line (a reload
    done or refused, a stats record) instead of sleeping, and still read all of them afterwards."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        self._stream = proc.stderr
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stream:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def wait(self, condition: Callable[[str], bool], what: str, timeout_s: float = 20.0) -> str:
        """The first line (collected so far or arriving within ``timeout_s``) that satisfies ``condition``."""
        with self._changed:
            found = self._changed.wait_for(lambda: next((x for x in self.lines if condition(x)), None), timeout_s)
        assert found is not None, f"timed out after {timeout_s} s waiting for {what}; stderr: {self.lines[-5:]}"
        return found

    def text(self) -> str:
        """Everything the process wrote to stderr (call after it exited)."""
        self._thread.join(timeout=10)
        return "".join(self.lines)
