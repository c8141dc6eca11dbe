"""udp-price server: answers fixed-size binary quote requests over UDP.

Top half: ``QuoteServer.handle_datagram(data, addr, now)``, pure (no sockets, no
clock). Bottom half: a non-blocking socket loop and ``main(argv)``.

    python udp_server.py --port 9999 --catalog catalog.csv
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import selectors
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType

from catalog import Catalog, CatalogError, load_catalog, price_total
from wire_format import (
    MAX_QUANTITY,
    MESSAGE_SIZE,
    VERSION,
    BatchReply,
    BatchRequest,
    LineResult,
    MalformedDatagram,
    MessageKind,
    QuoteReply,
    QuoteRequest,
    Reply,
    Status,
    decode_any_request,
    encode_batch_reply,
    encode_reply,
    lines_digest,
    peek_header,
)

log = logging.getLogger("udp_price.server")
Address = tuple[str, int] | tuple[str, int, int, int]
RECV_BUFFER = 2048
"""Bigger than any valid request, so oversized datagrams are seen whole and counted, not truncated."""
DRAIN_LIMIT = 256
"""Datagrams handled per wake-up before checking for signals again."""


@dataclass
class QuoteServer:
    """The pure core: bytes in, bytes (or None) out, counters kept."""

    catalog: Catalog
    stats: Counter[str] = field(default_factory=Counter)

    def handle_datagram(self, data: bytes, addr: Address, now: float) -> bytes | None:
        """The reply to send back to ``addr``, or None to stay silent.

        Never raises on remote input: garbage is counted under ``malformed.<reason>``.
        ``now`` is seconds on a monotonic clock (unused until rate limiting needs it).
        """
        self.stats["requests"] += 1
        reply: Reply | None
        try:
            request = decode_any_request(data)
        except MalformedDatagram as e:
            self.stats[f"malformed.{e.reason}"] += 1
            reply = self._error_reply(e, data)
        else:
            reply = self.quote(request) if isinstance(request, QuoteRequest) else self.quote_batch(request, data)
        if reply is None:
            self.stats["dropped"] += 1
            return None
        out = encode_reply(reply) if isinstance(reply, QuoteReply) else encode_batch_reply(reply)
        # The one place that enforces "never amplify": a reply is never bigger than its request.
        if len(out) > len(data):
            self.stats["dropped.amplification"] += 1
            return None
        self.stats["replies"] += 1
        self.stats[f"status.{reply.status.name}"] += 1
        return out

    def price(self, item: str, quantity: int) -> LineResult:
        """Price one line against the current catalog: exact integer cents."""
        unit = self.catalog.prices.get(item)
        if unit is None:
            return LineResult(Status.UNKNOWN_ITEM)
        if not 1 <= quantity <= MAX_QUANTITY:
            return LineResult(Status.BAD_QUANTITY, unit)
        total = price_total(unit, quantity)
        if total is None:
            return LineResult(Status.OVERFLOW, unit)
        return LineResult(Status.OK, unit, total)

    def quote(self, request: QuoteRequest) -> QuoteReply:
        """Answer a well-formed single quote request."""
        line = self.price(request.item, request.quantity)
        return QuoteReply(
            request_id=request.request_id,
            status=line.status,
            item=request.item,
            quantity=request.quantity,
            unit_price=line.unit_price,
            total=line.total,
            catalog_version=self.catalog.version,
        )

    def quote_batch(self, request: BatchRequest, data: bytes) -> BatchReply:
        """Answer a well-formed batch request, one result per line in order."""
        self.stats["batch_lines"] += len(request.lines)
        results = tuple(self.price(item, quantity) for item, quantity in request.lines)
        return BatchReply(request.request_id, Status.OK, lines_digest(data), results, self.catalog.version)

    def _error_reply(self, error: MalformedDatagram, data: bytes) -> Reply | None:
        """Answer only when the sender can be told something useful and the header is trustworthy."""
        request_id = error.request_id
        version_ok = True
        if request_id is None:
            # Another protocol version may use another length or checksum; its fixed 12-byte header
            # still tells us whom to answer (the size check below keeps that from amplifying).
            header = peek_header(data)
            if header is None or header[0] == VERSION or len(data) < MESSAGE_SIZE:
                return None
            request_id, version_ok = header[1], False
        status = (
            Status.UNSUPPORTED_VERSION
            if error.reason == "unsupported_version" or not version_ok
            else (Status.MALFORMED)
        )
        if data[3] == MessageKind.BATCH_REQUEST:
            return BatchReply(request_id, status, 0, catalog_version=self.catalog.version)
        return QuoteReply(request_id, status, "", 0, catalog_version=self.catalog.version)

    def summary(self) -> str:
        """Counters as one line, stable order."""
        return " ".join(f"{k}={v}" for k, v in sorted(self.stats.items()))


# ---------------------------------------------------------------- socket shell


class Stopper:
    """Wakes the serving loop from another thread or a signal handler, via a self-pipe."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self.stopped = False

    def fileno(self) -> int:
        return self._r

    def stop(self) -> None:
        self.stopped = True
        with contextlib.suppress(BlockingIOError):  # a full pipe already holds a wake-up
            os.write(self._w, b"x")

    def close(self) -> None:
        os.close(self._r)
        os.close(self._w)


def bind_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A non-blocking UDP socket bound to (host, port); IPv6 if host contains ':'."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


def serve(
    sock: socket.socket,
    server: QuoteServer,
    stopper: Stopper,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Answer datagrams on ``sock`` until ``stopper.stop()``; the datagram in hand is finished first."""
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ)
        sel.register(stopper, selectors.EVENT_READ)
        while not stopper.stopped:
            sel.select()
            _drain(sock, server, stopper, clock)


def _drain(sock: socket.socket, server: QuoteServer, stopper: Stopper, clock: Callable[[], float]) -> None:
    # Read until the socket is empty: one select() per burst instead of one per datagram.
    for _ in range(DRAIN_LIMIT):
        if stopper.stopped:
            return
        try:
            data, addr = sock.recvfrom(RECV_BUFFER)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:  # e.g. ICMP port unreachable surfacing as ECONNREFUSED: not fatal
            server.stats["socket_errors"] += 1
            log.debug("recvfrom failed: %s", e)
            continue
        reply = server.handle_datagram(data, addr, clock())
        if reply is not None:
            _send(sock, reply, addr, server)


def _send(sock: socket.socket, reply: bytes, addr: Address, server: QuoteServer) -> None:
    try:
        sock.sendto(reply, addr)
    except OSError as e:  # a full buffer or a vanished peer loses one reply, not the server
        server.stats["send_errors"] += 1
        log.debug("sendto %s failed: %s", addr, e)


@contextmanager
def stop_on_signals(stopper: Stopper) -> Iterator[None]:
    """SIGINT and SIGTERM ask the loop to stop instead of killing it mid-datagram."""

    def handler(signum: int, frame: FrameType | None) -> None:
        stopper.stop()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# ---------------------------------------------------------------- CLI

EXAMPLES = """\
examples:
  python udp_server.py                          # 127.0.0.1:9999, ./catalog.csv
  python udp_server.py --port 0                 # any free port; the start line says which
  python udp_server.py --host ::1 --catalog prices.csv --log-level debug

exit codes: 0 stopped cleanly (SIGINT/SIGTERM), 2 bad arguments, 4 bad catalog, 5 cannot bind
"""
EXIT_OK, EXIT_USAGE, EXIT_CATALOG, EXIT_BIND = 0, 2, 4, 5


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="udp_server.py",
        description="Serve price quotes over UDP from a CSV catalog.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; '::1' for IPv6)")
    p.add_argument("--port", type=int, default=9999, help="UDP port (default 9999; 0 picks a free one)")
    p.add_argument("--catalog", default="catalog.csv", help="catalog CSV with item,price columns")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535:
        p.error(f"--port {args.port} is not a UDP port (0-65535)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(levelname)s %(message)s")
    try:
        catalog = load_catalog(args.catalog)
    except CatalogError as e:
        print(f"udp_server: bad catalog {e.path}:", file=sys.stderr)
        for problem in e.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CATALOG
    try:
        sock = bind_socket(args.host, args.port)
    except OSError as e:
        print(f"udp_server: cannot bind {args.host}:{args.port}: {e.strerror or e}", file=sys.stderr)
        return EXIT_BIND
    server, stopper = QuoteServer(catalog), Stopper()
    host, port = sock.getsockname()[:2]
    print(
        f"udp_server: listening on {host}:{port} (udp), {len(catalog)} items, catalog version {catalog.version}",
        flush=True,
    )
    with sock, stop_on_signals(stopper):
        serve(sock, server, stopper)
    print(f"udp_server: stopped; {server.summary()}", flush=True)
    stopper.close()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
