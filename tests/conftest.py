"""Shared fixtures: a real server on a loopback port, and prices read independently of catalog.py."""

from __future__ import annotations

import csv
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from catalog import load_catalog  # noqa: E402
from udp_server import Control, QuoteServer, bind_socket, serve  # noqa: E402

CATALOG = ROOT / "catalog.csv"


def expected_prices() -> dict[str, int]:
    """Unit prices in cents straight from catalog.csv, without catalog.py: an independent oracle."""
    with CATALOG.open(encoding="utf-8", newline="") as f:
        return {row["item"]: int(Decimal(row["price"]) * 100) for row in csv.DictReader(f)}


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


@pytest.fixture
def server() -> Iterator[RunningServer]:
    """A real udp-price server on 127.0.0.1:<free port>, serving catalog.csv from a thread."""
    with serving(QuoteServer(load_catalog(CATALOG))) as running:
        yield running
