"""Helpers for the tests of the server's overload mark and of the client's congestion window:
a server socket and a client on loopback, one wake-up of the serving loop as serve() runs it, a
wall clock that can be stepped, and a sender on a path of a fixed RTT."""

from __future__ import annotations

import fcntl
import socket
import sys
import termios
import time
from typing import Any

from udp_price.client.congestion import CongestionController
from udp_price.server import loop
from udp_price.server.core import QuoteServer
from udp_price.server.overload import OverloadDetector
from udp_price.wire import QuoteRequest, Status, decode_any_reply, encode_request, split_overload_mark


def pair_of_sockets(rcvbuf: int | None = None) -> tuple[socket.socket, socket.socket]:
    """The server's socket as the server binds it, and a non-blocking client connected to it."""
    server = loop.bind_socket("127.0.0.1", 0)
    if rcvbuf is not None:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.connect(server.getsockname())
    client.setblocking(False)
    return server, client


def send_quotes(client: socket.socket, n: int, first: int = 1) -> None:
    for i in range(n):
        client.send(encode_request(QuoteRequest(first + i, "apple", 1, transmission=1)))


def replies(client: socket.socket) -> list[bytes]:
    """Every reply waiting on ``client`` now."""
    out = []
    while True:
        try:
            out.append(client.recv(2048))
        except BlockingIOError:
            return out


def queued_bytes(sock: socket.socket) -> int:
    return int.from_bytes(fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"), sys.byteorder)


def wait_until_queued(sock: socket.socket, timeout: float = 2.0) -> None:
    """Loopback delivers at once, but wait on the condition (bytes queued), not a sleep."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if queued_bytes(sock) > 0:
            return
        time.sleep(0.001)
    raise AssertionError("datagrams never queued")


def wake_up(
    sock: Any, core: QuoteServer, detector: OverloadDetector, now: float | None = None
) -> tuple[int, float | None]:
    """One wake-up exactly as serve() runs it, at ``now`` on the loop's clock (default: the
    monotonic clock): the detector decides the mark and whether the first datagram is read with
    recvmsg (drop counter, queueing time), and judges that time. Returns (handled, waited)."""
    began = time.monotonic() if now is None else now
    marking, want_drops = detector.next_burst(began)
    handled, drops, waited = loop._drain(sock, core, loop.Control(), lambda: began, None, marking, want_drops, detector)
    detector.after_burst(handled, drops, began)
    return handled, waited


def marks(got: list[bytes]) -> list[bool]:
    return [split_overload_mark(r)[1] for r in got]


def all_ok(got: list[bytes]) -> bool:
    return all(decode_any_reply(split_overload_mark(r)[0]).status is Status.OK for r in got)


class ShiftedWallClock:
    """Stands in for the ``time`` module of the server's loop and the client's API (the ``wall``
    fixture in conftest.py): ``time.time()`` is the real wall clock plus ``offset`` (a step of the
    wall clock, or a datagram that waited ``offset`` seconds, without sleeping)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def closed_loop(
    c: CongestionController, start: float, base_rtt: float, seconds: float, queue: float = 0.0
) -> list[tuple[float, int]]:
    """A sender with rows to spare: each reply comes exactly ``base_rtt`` after its request, plus
    ``queue`` while the window is above the slowdown's (a queue that drains when the sender slows
    down); the window is refilled at once. Returns (time, window) per reply."""
    in_flight: list[float] = []
    now, seen = start, []
    while now < start + seconds:
        while len(in_flight) < c.window:
            in_flight.append(now)
        sent = in_flight.pop(0)
        now = max(now, sent + base_rtt + (queue if c.window > c.config.slowdown_window else 0.0))
        c.on_reply(now, [sent], 1, busy=False, marked=False, in_flight=len(in_flight))
        seen.append((now, c.window))
    return seen
