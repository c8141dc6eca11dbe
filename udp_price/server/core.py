"""udp-price server: answers fixed-size binary quote requests over UDP.

Top half: ``QuoteServer.handle_datagram(data, addr, now)``, pure (no sockets, no
clock). Bottom half: a non-blocking socket loop and ``main(argv)``.

    python udp_server.py --port 9999 --catalog catalog.csv
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing
import multiprocessing.queues
import os
import queue
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
from typing import Any, Protocol

from catalog import Catalog, CatalogError, load_catalog, price_total, wire_limit_problems
from catalog_reload import WATCH_POLL_S, WATCH_SETTLE_S, Operations
from guards import RateLimiter, ReplyCache, Verdict
from metrics import start_metrics
from reflectors import REFLECTOR_PORTS
from wire_format import (
    LIST_PAGE_SIZE,
    MAX_QUANTITY,
    MAX_RETRY_AFTER_MS,
    MAX_TOTAL,
    REQUEST_KINDS,
    VERSION,
    BatchReply,
    BatchRequest,
    LineResult,
    ListReply,
    ListRequest,
    MalformedDatagram,
    MessageKind,
    QuoteReply,
    QuoteRequest,
    Reply,
    Request,
    Status,
    decode_any_request,
    encode_batch_reply,
    encode_list_reply,
    encode_ok_reply,
    encode_reply,
    lines_digest,
    peek_header,
    peek_quote_request,
)

log = logging.getLogger("udp_price.server")
Address = tuple[str, int] | tuple[str, int, int, int]
RECV_BUFFER = 2048
"""Bigger than any valid request, so oversized datagrams are seen whole and counted, not truncated."""
RECV_QUEUE_BYTES = 4 * 1024 * 1024
_STATUS_KEY_BY_VALUE = {int(status): f"status.{status.name}" for status in Status}
REPLY_STATUS_OFFSET = 12
"""Every reply kind carries its status byte right after the 12-byte common header."""
_ENCODERS: dict[type, Callable[[Any], bytes]] = {
    QuoteReply: encode_reply,
    BatchReply: encode_batch_reply,
    ListReply: encode_list_reply,
}
DRAIN_LIMIT = 256
"""Datagrams handled per wake-up before checking for signals again."""


@dataclass
class QuoteServer:
    """The pure core: bytes in, bytes (or None) out, counters kept.

    ``limiter`` and ``cache`` are optional guards (see guards.py); both are driven by the
    ``now`` passed in, never by a clock of their own.
    """

    catalog: Catalog
    limiter: RateLimiter | None = None
    cache: ReplyCache | None = None
    stats: Counter[str] = field(default_factory=Counter)
    fast_path: bool = True
    """Answer plain quotes for known items through quote_fast (same bytes, same counters, ~5x less
    work); False sends everything through the general path, which the equivalence tests compare with."""

    def __post_init__(self) -> None:
        self.set_catalog(self.catalog)

    def handle_datagram(self, data: bytes, addr: Address, now: float) -> bytes | None:
        """The reply to send back to ``addr``, or None to stay silent.

        Never raises on remote input: garbage is counted under ``malformed.<reason>``.
        ``now`` is seconds on a monotonic clock. Every reply leaves through ``_checked``.
        """
        self.stats["requests"] += 1
        return self._checked(data, self._respond(data, addr, now))

    def _checked(self, data: bytes, out: bytes | None) -> bytes | None:
        """The one place every outgoing datagram passes, cached or fresh, error or answer: it is
        never larger than the request that caused it (no amplification toward a spoofed source)."""
        if out is None:
            return None
        if len(out) > len(data):
            self.stats["dropped.amplification"] += 1
            return None
        self.stats["replies"] += 1
        self.stats[_STATUS_KEY_BY_VALUE.get(out[REPLY_STATUS_OFFSET], "status.unknown")] += 1
        return out

    def _respond(self, data: bytes, addr: Address, now: float) -> bytes | None:
        if addr[1] in REFLECTOR_PORTS:
            # Checked before the rate limiter, so these cost no tokens of a real client behind the same IP.
            self.stats["refused.source_port"] += 1
            return None
        verdict = self.limiter.check(addr[0], now) if self.limiter is not None else Verdict.ALLOW
        if verdict is Verdict.DROP:
            self.stats["rate_limited.dropped"] += 1
            return None
        if self.fast_path and verdict is Verdict.ALLOW:
            out = self.quote_fast(data, addr, now)
            if out is not None:
                return out
        try:
            request = decode_any_request(data)
        except MalformedDatagram as e:
            self.stats[f"malformed.{e.reason}"] += 1
            return self._encoded(self._error_reply(e, data) if verdict is Verdict.ALLOW else None)
        if verdict is Verdict.SLIP:
            self.stats["rate_limited.busy"] += 1
            assert self.limiter is not None
            return self._encoded(self._busy_reply(request, data, self.limiter.retry_after_ms(addr[0])))
        key = (addr[0], addr[1], request.request_id)
        if self.cache is not None:
            cached = self.cache.get(key, data, now)
            if cached is not None:
                self.stats["cache_hits"] += 1
                return cached
        out = self._encoded(self.answer(request, data))
        if out is not None and self.cache is not None and len(out) <= len(data):
            self.cache.put(key, data, out, now)
        return out

    def quote_fast(self, data: bytes, addr: Address, now: float) -> bytes | None:
        """The common case, profiled at ~2 us instead of ~10: an intact single quote request whose
        item field is byte-identical to a catalog item's and whose total is in range. Returns None
        for anything else, before counting anything, and the general path then handles it."""
        peeked = peek_quote_request(data)
        if peeked is None:
            return None
        request_id, item_field, quantity, transmission = peeked
        catalog = self.catalog
        unit = catalog.wire_prices.get(item_field)
        if unit is None or not 1 <= quantity <= MAX_QUANTITY or unit * quantity > MAX_TOTAL:
            return None
        key = (addr[0], addr[1], request_id)
        if self.cache is not None:
            cached = self.cache.get(key, data, now)
            if cached is not None:
                self.stats["cache_hits"] += 1
                return cached
        out = encode_ok_reply(request_id, item_field, quantity, unit, unit * quantity, catalog.version, transmission)
        if self.cache is not None and len(out) <= len(data):
            self.cache.put(key, data, out, now)
        return out

    def _encoded(self, reply: Reply | None) -> bytes | None:
        """The bytes of ``reply``; None (silence, counted) if there is none."""
        if reply is None:
            self.stats["dropped"] += 1
            return None
        return _ENCODERS[type(reply)](reply)

    def answer(self, request: Request, data: bytes) -> Reply:
        """The reply to a well-formed request of any kind."""
        if isinstance(request, QuoteRequest):
            return self.quote(request)
        if isinstance(request, BatchRequest):
            return self.quote_batch(request, data)
        return self.list_page(request)

    def list_page(self, request: ListRequest) -> ListReply:
        """One page of the catalog, sorted by name; BAD_PAGE past the end."""
        entries = self.catalog.listing  # sorted once per catalog object, never keyed by version alone
        pages = max(1, -(-len(entries) // LIST_PAGE_SIZE))
        version = self.catalog.version
        if request.page >= pages:
            return ListReply(request.request_id, Status.BAD_PAGE, request.page, pages, catalog_version=version)
        chunk = entries[request.page * LIST_PAGE_SIZE : (request.page + 1) * LIST_PAGE_SIZE]
        return ListReply(request.request_id, Status.OK, request.page, pages, chunk, version)

    def _busy_reply(self, request: Request, data: bytes, retry_after_ms: int) -> Reply:
        retry = min(retry_after_ms, MAX_RETRY_AFTER_MS)
        if isinstance(request, ListRequest):
            return ListReply(request.request_id, Status.BUSY, request.page, 0, catalog_version=self.catalog.version)
        if isinstance(request, QuoteRequest):
            return QuoteReply(
                request.request_id,
                Status.BUSY,
                request.item,
                request.quantity,
                catalog_version=self.catalog.version,
                retry_after_ms=retry,
                transmission=request.transmission,
            )
        return BatchReply(
            request.request_id,
            Status.BUSY,
            lines_digest(data),
            catalog_version=self.catalog.version,
            retry_after_ms=retry,
            transmission=request.transmission,
        )

    def set_catalog(self, catalog: Catalog) -> None:
        """Swap in a new, already validated catalog; requests after this see only the new one.

        Raises ValueError for a catalog the wire cannot carry (load_catalog never returns one):
        better refused here than met by the first list request."""
        problems = wire_limit_problems(catalog.prices)
        if problems:
            raise ValueError("; ".join(problems))
        self.swap_catalog(catalog.prepared())

    def swap_catalog(self, prepared: Catalog) -> None:
        """Swap in a catalog already validated and prepared (off the serving thread, by the reload
        worker): one reference assignment, so a datagram sees the old catalog or the new, never a mix."""
        self.catalog = prepared

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
            transmission=request.transmission,
        )

    def quote_batch(self, request: BatchRequest, data: bytes) -> BatchReply:
        """Answer a well-formed batch request, one result per line in order."""
        self.stats["batch_lines"] += len(request.lines)
        results = tuple(self.price(item, quantity) for item, quantity in request.lines)
        return BatchReply(
            request.request_id,
            Status.OK,
            lines_digest(data),
            results,
            self.catalog.version,
            transmission=request.transmission,
        )

    def _error_reply(self, error: MalformedDatagram, data: bytes) -> Reply | None:
        """Answer only when the sender can be told something useful and the header is trustworthy."""
        request_id = error.request_id
        version_ok = True
        if request_id is None:
            # Another protocol version may use another length; its 12-byte header and trailing CRC32
            # are shared by all versions and tell us whom to answer (_checked keeps it from amplifying).
            # peek_header checks the version-independent seal (CRC32) first: a datagram of our
            # version with a flipped version byte fails it and is dropped, never told UNSUPPORTED_VERSION.
            header = peek_header(data)
            if header is None or header[0] == VERSION:
                return None
            request_id, version_ok = header[1], False
        if data[3] not in REQUEST_KINDS:
            # Replies (and unknown kinds) are never answered, however intact: answering a reply
            # lets one spoofed datagram start an endless exchange between two peers (or with itself).
            self.stats["refused.not_a_request"] += 1
            return None
        status = (
            Status.UNSUPPORTED_VERSION
            if error.reason == "unsupported_version" or not version_ok
            else (Status.MALFORMED)
        )
        if data[3] == MessageKind.BATCH_REQUEST:
            # The lines digest binds even a whole-batch error to the request (a client ignores one without it).
            return BatchReply(request_id, status, lines_digest(data), catalog_version=self.catalog.version)
        if data[3] == MessageKind.LIST_REQUEST:
            return ListReply(request_id, status, 0, 0, catalog_version=self.catalog.version)
        return QuoteReply(request_id, status, "", 0, catalog_version=self.catalog.version)

    def counters(self) -> dict[str, int]:
        """Every counter, the guards' included."""
        out = dict(self.stats)
        if self.cache is not None:
            out["cache_evictions"] = self.cache.evictions
        return out

    def summary(self) -> str:
        """Counters as one line, stable order."""
        return " ".join(f"{k}={v}" for k, v in sorted(self.counters().items()))


# ---------------------------------------------------------------- socket shell


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
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


def serve(
    sock: socket.socket,
    server: QuoteServer,
    control: Control,
    clock: Callable[[], float] = time.monotonic,
    duties: Duties | None = None,
) -> None:
    """Answer datagrams on ``sock`` until ``control.stop()``; the datagram in hand is finished first."""
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
            _drain(sock, server, control, clock)
            if duties is not None and next_tick is not None and clock() >= next_tick:
                try:
                    next_tick = duties.tick(clock())
                except Exception as e:
                    internal_error(server, e, "running periodic duties")
                    next_tick = clock() + 1.0


def _drain(sock: socket.socket, server: QuoteServer, control: Control, clock: Callable[[], float]) -> None:
    # Read until the socket is empty: one select() per burst instead of one per datagram.
    # Methods are bound to locals once per burst: this loop runs once per datagram.
    recvfrom, sendto, handle, stats = sock.recvfrom, sock.sendto, server.handle_datagram, server.stats
    for _ in range(DRAIN_LIMIT):
        if control.stopped:
            return
        try:
            data, addr = recvfrom(RECV_BUFFER)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:  # e.g. ICMP port unreachable surfacing as ECONNREFUSED: not fatal
            stats["socket_errors"] += 1
            log.debug("recvfrom failed: %s", e)
            continue
        stats["bytes_received"] += len(data)
        try:
            reply = handle(data, addr, clock())
        except Exception as e:  # a bug met by one datagram must not stop the service for everyone
            internal_error(server, e, "handling a datagram")
            continue
        if reply is not None:
            try:
                sendto(reply, addr)
            except OSError as e:  # a full buffer or a vanished peer loses one reply, not the server
                stats["send_errors"] += 1
                log.debug("sendto %s failed: %s", addr, e)
                continue
            stats["bytes_sent"] += len(reply)


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


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if fmt == "json" else logging.Formatter("udp_server: %(levelname)s %(message)s")
    )
    root = logging.getLogger("udp_price")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


# ---------------------------------------------------------------- CLI

EXAMPLES = """\
examples:
  python udp_server.py                          # 127.0.0.1:9999, ./catalog.csv
  python udp_server.py --port 0                 # any free port; the start line says which
  python udp_server.py --host ::1 --catalog prices.csv --log-level debug
  python udp_server.py --watch --stats-interval 60 --metrics-port 9100 --log-format json
  kill -HUP <pid>                               # reload the catalog (validated first)
  python udp_server.py --workers 2              # one process per core, SO_REUSEPORT

exit codes: 0 stopped cleanly (SIGINT/SIGTERM), 2 bad arguments, 4 bad catalog, 5 cannot bind
"""
EXIT_OK, EXIT_USAGE, EXIT_CATALOG, EXIT_BIND = 0, 2, 4, 5


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


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
    p.add_argument("--log-format", default="text", choices=["text", "json"], help="stderr log lines (default text)")
    p.add_argument(
        "--rate",
        type=_non_negative,
        default=40_000,
        help="requests per second allowed per source IP (default 40000; 0 turns limiting off)",
    )
    p.add_argument("--burst", type=_non_negative, default=80_000, help="token bucket size per source (default 80000)")
    p.add_argument(
        "--cache-size",
        type=int,
        default=100_000,
        help="replies kept for retransmitted requests (default 100000; 0 turns the cache off)",
    )
    p.add_argument("--cache-age", type=_non_negative, default=60.0, help="seconds a cached reply lives (default 60)")
    p.add_argument(
        "--watch",
        action="store_true",
        help=f"reload the catalog when the file changes (checked every {WATCH_POLL_S} s; a file replaced by "
        "a rename is loaded at once, one edited in place once it has settled)",
    )
    p.add_argument(
        "--watch-settle",
        type=_non_negative,
        default=WATCH_SETTLE_S,
        metavar="S",
        help=f"with --watch: seconds a file edited in place must stay unchanged before it is loaded "
        f"(default {WATCH_SETTLE_S:g})",
    )
    p.add_argument(
        "--stats-interval",
        type=_non_negative,
        default=0,
        help="log counters every this many seconds (default 0: only at exit)",
    )
    p.add_argument("--workers", type=int, default=1, help="processes sharing the port with SO_REUSEPORT (default 1)")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics over HTTP on 127.0.0.1:PORT (off by default)",
    )
    args = p.parse_args(argv)
    for name in ("port", "metrics_port"):
        value = getattr(args, name)
        if value is not None and not 0 <= value <= 65535:
            p.error(f"--{name.replace('_', '-')} {value} is not a port (0-65535)")
    if args.cache_size < 0:
        p.error("--cache-size must be >= 0")
    if args.workers < 1:
        p.error("--workers must be at least 1")
    if args.workers > 1 and args.metrics_port is not None:
        p.error("--metrics-port needs --workers 1 (each worker keeps its own counters)")
    return args


def operations(server: QuoteServer, args: argparse.Namespace, control: Control) -> Operations:
    return Operations(
        server,
        args.catalog,
        watch_interval_s=WATCH_POLL_S if args.watch else None,
        stats_interval_s=args.stats_interval or None,
        settle_s=args.watch_settle,
        wake=control.wake,
    )


def build_server(args: argparse.Namespace, catalog: Catalog) -> QuoteServer:
    limiter = RateLimiter(rate=args.rate, burst=max(1.0, args.burst)) if args.rate > 0 else None
    cache = ReplyCache(max_entries=args.cache_size, max_age_s=args.cache_age) if args.cache_size > 0 else None
    return QuoteServer(catalog, limiter=limiter, cache=cache)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        catalog = load_catalog(args.catalog)
    except CatalogError as e:
        print(f"udp_server: bad catalog {e.path}:", file=sys.stderr)
        for problem in e.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CATALOG
    try:
        sock = bind_socket(args.host, args.port, reuse_port=args.workers > 1)
    except OSError as e:
        print(f"udp_server: cannot bind {args.host}:{args.port}: {e.strerror or e}", file=sys.stderr)
        return EXIT_BIND
    if args.workers > 1:
        return run_workers(args, catalog, sock)
    server, control = build_server(args, catalog), Control()
    # Handlers first, start line after: whoever reacts to the start line with a SIGHUP must find
    # a server that reloads, not one killed by the signal's default action.
    with sock, handle_signals(control):
        ops = operations(server, args, control)
        if args.metrics_port is not None:
            try:
                metrics_at = start_metrics(server, args.metrics_port)
            except OSError as e:
                print(
                    f"udp_server: cannot serve metrics on 127.0.0.1:{args.metrics_port}: {e.strerror}", file=sys.stderr
                )
                return EXIT_BIND
            log.info("metrics on http://%s/metrics", metrics_at, extra={"event": "metrics"})
        print(
            f"udp_server: listening on {_shown(sock)} (udp), {len(catalog)} items, catalog version {catalog.version}",
            flush=True,
        )
        serve(sock, server, control, duties=ops)
        ops.close()
    print(f"udp_server: stopped; {server.summary()}", flush=True)
    control.close()
    return EXIT_OK


def _shown(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---------------------------------------------------------------- --workers N


def _worker(
    args: argparse.Namespace,
    catalog: Catalog,
    sock: socket.socket,
    index: int,
    results: multiprocessing.queues.Queue[tuple[int, dict[str, int]]],
) -> None:
    """One worker process: its own server core and loop on its own SO_REUSEPORT socket."""
    server, control = build_server(args, catalog), Control()
    ops = operations(server, args, control)
    with sock, handle_signals(control):
        serve(sock, server, control, duties=ops)
        ops.close()
    results.put((index, server.counters()))
    control.close()


def run_workers(args: argparse.Namespace, catalog: Catalog, first: socket.socket) -> int:
    """N processes share the port with SO_REUSEPORT; the kernel spreads flows over them by a hash
    of the source address. This process supervises: it forwards SIGTERM/SIGINT/SIGHUP and sums
    the workers' counters at the end. One reply cache and one rate limit per worker: a flow always
    hashes to the same worker, so each still sees all of one client's requests."""
    host, port = first.getsockname()[:2]
    sockets = [first] + [bind_socket(host, port, reuse_port=True) for _ in range(args.workers - 1)]
    ctx = multiprocessing.get_context("fork")
    results: multiprocessing.queues.Queue[tuple[int, dict[str, int]]] = ctx.Queue()
    # Ignored until each worker installs its own handler (SIG_IGN survives fork): a SIGHUP
    # forwarded to a worker still starting up must not kill it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    procs = [
        ctx.Process(target=_worker, args=(args, catalog, s, i, results), daemon=True) for i, s in enumerate(sockets)
    ]
    for proc in procs:
        proc.start()
    for s in sockets:
        s.close()  # each worker holds its own copy
    control = Control()
    with handle_signals(control):
        print(
            f"udp_server: listening on {host}:{port} (udp), {len(catalog)} items, catalog version {catalog.version}, "
            f"{args.workers} workers (pids {' '.join(str(p.pid) for p in procs)})",
            flush=True,
        )
        while not control.stopped and any(p.is_alive() for p in procs):
            if control.reload_requested:
                control.reload_requested = False
                for proc in procs:
                    if proc.pid is not None:
                        os.kill(proc.pid, signal.SIGHUP)
            time.sleep(0.1)
    for proc in procs:
        if proc.is_alive() and proc.pid is not None:
            os.kill(proc.pid, signal.SIGTERM)
    totals: Counter[str] = Counter()
    per_worker = [0] * len(procs)
    for _ in procs:
        try:
            index, counters = results.get(timeout=10)
        except queue.Empty:
            break
        totals.update(counters)
        per_worker[index] = counters.get("requests", 0)
    for proc in procs:
        proc.join(10)
    summary = " ".join(f"{k}={v}" for k, v in sorted(totals.items()))
    print(f"udp_server: stopped; workers_requests={','.join(map(str, per_worker))} {summary}", flush=True)
    control.close()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
