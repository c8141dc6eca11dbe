"""The server's socket shell: a non-blocking UDP loop around the pure core, woken by a self-pipe
(``Control``) for signals, reloads and stop requests."""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Protocol

from udp_price.server.core import QuoteServer
from udp_price.server.overload import OverloadDetector
from udp_price.server.timing import DurationHistogram

log = logging.getLogger("udp_price.server")
RECV_BUFFER = 2048
"""Bigger than any valid request, so oversized datagrams are seen whole and counted, not truncated."""
RECV_QUEUE_BYTES = 4 * 1024 * 1024
DRAIN_LIMIT = 256
"""Datagrams handled per wake-up before checking for signals again."""
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40 if sys.platform.startswith("linux") else None)
"""Linux: recvmsg reports the socket's count of datagrams dropped for lack of buffer (socket(7))."""
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35 if sys.platform.startswith("linux") else None)
"""Linux: recvmsg reports when the kernel queued the datagram (CLOCK_REALTIME, a struct timespec)."""
_TIMESPEC = struct.Struct("@qq")
ANC_SPACE = socket.CMSG_SPACE(4) + socket.CMSG_SPACE(_TIMESPEC.size) if hasattr(socket, "CMSG_SPACE") else 0


class Control:
    """Wakes the serving loop from another thread or a signal handler, via a self-pipe."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self.stopped = False
        self.reload_requested = False

    def fileno(self) -> int:
        return self._r

    def wake(self) -> None:
        """Interrupt the loop's wait (from a signal handler or another thread)."""
        with contextlib.suppress(BlockingIOError):  # a full pipe already holds a wake-up
            os.write(self._w, b"x")

    def stop(self) -> None:
        self.stopped = True
        self.wake()

    def request_reload(self) -> None:
        self.reload_requested = True
        self.wake()

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._r, 4096):
                pass

    def close(self) -> None:
        os.close(self._r)
        os.close(self._w)


class Duties(Protocol):
    """What the loop does besides answering datagrams: reloads and periodic work."""

    def reload(self) -> None:
        """Ask for a reload; must return at once (the work happens elsewhere)."""
        ...

    def swap_in_ready(self) -> None:
        """Install a catalog prepared elsewhere, if one is ready; cheap when none is."""
        ...

    def tick(self, now: float) -> float | None:
        """Do what is due at ``now``; return when to be called next (None: never)."""
        ...


def bind_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A non-blocking UDP socket bound to (host, port); IPv6 if host contains ':'."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    # A deeper receive queue rides out bursts instead of dropping legitimate requests. As root,
    # SO_RCVBUFFORCE goes past net.core.rmem_max (often only 208 KB); otherwise take what we get.
    for option in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
        if option is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, RECV_QUEUE_BYTES)
                break
            except OSError:
                continue
    for option in (SO_RXQ_OVFL, SO_TIMESTAMPNS):
        if option is not None:
            with contextlib.suppress(OSError):  # without them, the backlog and the limiter still mark
                sock.setsockopt(socket.SOL_SOCKET, option, 1)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


def kernel_drops(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    """The SO_RXQ_OVFL drop counter in recvmsg's ancillary data, or None if it is not there."""
    for level, kind, value in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(value) >= 4:
            return int.from_bytes(value[:4], sys.byteorder)
    return None


def queued_at(ancdata: list[tuple[int, int, bytes]]) -> float | None:
    """When the kernel queued the datagram (SO_TIMESTAMPNS, Unix seconds), or None if not there."""
    for level, kind, value in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack_from(value)
            return float(seconds) + float(nanoseconds) / 1e9
    return None


def reports_queueing_time(sock: socket.socket) -> bool:
    """Whether recvmsg on ``sock`` brings each datagram's kernel receive timestamp."""
    if SO_TIMESTAMPNS is None:
        return False
    try:
        return sock.getsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS) != 0
    except OSError:
        return False


def serve(
    sock: socket.socket,
    server: QuoteServer,
    control: Control,
    clock: Callable[[], float] = time.monotonic,
    duties: Duties | None = None,
    timing: DurationHistogram | None = None,
) -> None:
    """Answer datagrams on ``sock`` until ``control.stop()``; the datagram in hand is finished first.
    ``timing``: where to record how long handling each datagram takes (None: not measured)."""
    overload = OverloadDetector(stats=server.stats, timestamps=reports_queueing_time(sock))
    next_tick = duties.tick(clock()) if duties else None
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ)
        sel.register(control, selectors.EVENT_READ)
        while not control.stopped:
            ready = sel.select(None if next_tick is None else max(0.0, next_tick - clock()))
            if any(key.fileobj is control for key, _ in ready):
                control.drain()
            if control.reload_requested and duties is not None:
                control.reload_requested = False
                try:
                    duties.reload()
                except Exception as e:
                    internal_error(server, e, "reloading the catalog")
            if duties is not None:
                duties.swap_in_ready()
            now = clock()
            marking, want_drops = overload.next_burst(now)
            handled, drops, _ = _drain(sock, server, control, clock, timing, marking, want_drops, overload)
            overload.after_burst(handled, drops, now)
            if duties is not None and next_tick is not None and clock() >= next_tick:
                try:
                    next_tick = duties.tick(clock())
                except Exception as e:
                    internal_error(server, e, "running periodic duties")
                    next_tick = clock() + 1.0


def _drain(
    sock: socket.socket,
    server: QuoteServer,
    control: Control,
    clock: Callable[[], float],
    timing: DurationHistogram | None,
    marking: bool = False,
    want_drops: bool = True,
    overload: OverloadDetector | None = None,
) -> tuple[int, int | None, float | None]:
    """Handle the datagrams waiting (at most DRAIN_LIMIT); returns how many, the socket's
    SO_RXQ_OVFL drop counter and how long the first datagram waited in the socket's queue, in
    seconds (None: not read or not available). ``marking``: the server is overloaded, so
    every reply carries the OVERLOADED flag (replies to a source near its rate limit always do);
    the core sets it as it encodes each reply (QuoteServer.overloaded), never here after the fact.
    ``want_drops``: read the first datagram with recvmsg for the drop counter and its queueing time,
    which ``overload`` judges: if that request waited too long, this burst's replies are marked."""
    server.overloaded = marking
    # Read until the socket is empty: one select() per burst instead of one per datagram.
    # Methods are bound to locals once per burst: this loop runs once per datagram.
    recvfrom, sendto, handle, stats = sock.recvfrom, sock.sendto, server.handle_datagram, server.stats
    observe = timing.observe if timing is not None else None
    drops, waited, plain = None, None, SO_RXQ_OVFL is None or not want_drops
    for i in range(DRAIN_LIMIT):
        if control.stopped:
            return i, drops, waited
        try:
            if i or plain:
                data, addr = recvfrom(RECV_BUFFER)
            else:  # the burst's first datagram brings the drop counter (once per wake-up, not per datagram)
                data, ancdata, _, addr = sock.recvmsg(RECV_BUFFER, ANC_SPACE)
                drops, arrived = kernel_drops(ancdata), queued_at(ancdata)
                waited = None if arrived is None else time.time() - arrived  # the head of the queue: the oldest
                if overload is not None and overload.queue_waited(waited, clock()):
                    server.overloaded = True
        except (BlockingIOError, InterruptedError):
            return i, drops, waited
        except OSError as e:  # e.g. ICMP port unreachable surfacing as ECONNREFUSED: not fatal
            stats["socket_errors"] += 1
            log.debug("recvfrom failed: %s", e)
            continue
        stats["bytes_received"] += len(data)
        now = clock()
        try:
            reply = handle(data, addr, now)
        except Exception as e:  # a bug met by one datagram must not stop the service for everyone
            internal_error(server, e, "handling a datagram")
            continue
        if observe is not None:
            observe(clock() - now)
        if reply is not None:
            try:
                sendto(reply, addr)
            except OSError as e:  # a full buffer or a vanished peer loses one reply, not the server
                stats["send_errors"] += 1
                log.debug("sendto %s failed: %s", addr, e)
                continue
            stats["bytes_sent"] += len(reply)
    return DRAIN_LIMIT, drops, waited


_logged_errors: set[tuple[str, str, int | None]] = set()


def internal_error(server: QuoteServer, error: Exception, doing: str) -> None:
    """Count ``error`` as ``internal_errors`` and log its traceback the first time this kind of
    error is raised at this place; repeats are only counted (one bad datagram sent a million times
    must not flood the log)."""
    server.stats["internal_errors"] += 1
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = (type(error).__qualname__, tb.tb_frame.f_code.co_filename if tb else "", tb.tb_lineno if tb else None)
    if where in _logged_errors:
        return
    _logged_errors.add(where)
    log.error(
        "internal error while %s (serving goes on; repeats of this error are only counted as internal_errors)",
        doing,
        exc_info=error,
        extra={"event": "internal_error"},
    )


@contextmanager
def handle_signals(control: Control) -> Iterator[None]:
    """SIGINT and SIGTERM ask the loop to stop instead of killing it mid-datagram; SIGHUP reloads."""

    def stop(signum: int, frame: FrameType | None) -> None:
        control.stop()

    def reload(signum: int, frame: FrameType | None) -> None:
        control.request_reload()

    handlers = {signal.SIGINT: stop, signal.SIGTERM: stop, signal.SIGHUP: reload}
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
