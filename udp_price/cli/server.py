"""``udp-price-server``: serve price quotes over UDP from a CSV catalog."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from udp_price.address import format_address
from udp_price.catalog import load_catalog
from udp_price.cli.common import add_version, default_catalog, examples_for, prog_name
from udp_price.errors import CatalogError
from udp_price.server.loop import Control, bind_socket, handle_signals, serve
from udp_price.server.metrics import start_metrics
from udp_price.server.ops import (
    WATCH_POLL_S,
    WATCH_SETTLE_S,
    build_server,
    operations,
    return_freed_memory,
    setup_logging,
)
from udp_price.server.workers import run_workers

log = logging.getLogger("udp_price.server")

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


def parse_args(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=prog_name(prog, "udp_server.py"),
        description="Serve price quotes over UDP from a CSV catalog.",
        epilog=examples_for(prog_name(prog, "udp_server.py"), EXAMPLES, "python udp_server.py"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_version(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; '::1' for IPv6)")
    p.add_argument("--port", type=int, default=9999, help="UDP port (default 9999; 0 picks a free one)")
    p.add_argument(
        "--catalog",
        default=None,
        help="catalog CSV with item,price columns (default ./catalog.csv, or the sample shipped with udp-price "
        "when the working directory has none)",
    )
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
    if args.catalog is None:
        args.catalog = default_catalog()
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


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parse_args(argv, prog)
    setup_logging(args.log_level, args.log_format)
    try:
        catalog = load_catalog(args.catalog)
    except CatalogError as e:
        print(f"udp_server: bad catalog {e.path}:", file=sys.stderr)
        for problem in e.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CATALOG
    return_freed_memory()  # the parse's temporaries: freed, but kept by the allocator until trimmed
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
        ops = operations(server, args, control.wake)
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
            f"udp_server: listening on {format_address(sock.getsockname())} (udp), {len(catalog)} items, "
            f"catalog version {catalog.version}, "
            f"catalog {os.path.abspath(args.catalog)}",
            flush=True,
        )
        serve(sock, server, control, duties=ops)
        ops.close()
    print(f"udp_server: stopped; {server.summary()}", flush=True)
    control.close()
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
