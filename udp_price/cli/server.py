"""``udp-price-server``: serve price quotes over UDP from a CSV catalog."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
from collections.abc import Callable

from udp_price.address import format_address
from udp_price.auth import new_key_line, read_keys_file
from udp_price.auth.keys import MAX_KEY_ID, NEW_KEY_BYTES
from udp_price.catalog import parse_catalog_bytes, read_catalog_file
from udp_price.cli.common import (
    add_verbosity,
    add_version,
    default_catalog,
    examples_for,
    finite_number,
    listen_address_arg,
    prog_name,
    seconds,
    verbosity,
)
from udp_price.errors import CatalogError, KeyFileError
from udp_price.server.filewatch import WATCH_POLL_S, WATCH_SETTLE_S, FileState
from udp_price.server.logs import announce, setup_logging
from udp_price.server.loop import Control, bind_socket, handle_signals, serve
from udp_price.server.memory import return_freed_memory
from udp_price.server.metrics import start_metrics
from udp_price.server.ops import build_server, operations
from udp_price.server.timing import DurationHistogram
from udp_price.server.workers import run_workers

log = logging.getLogger("udp_price.server")

EXAMPLES = """\
examples:
  python udp_server.py                          # 127.0.0.1:9999, ./catalog.csv
  python udp_server.py --listen 127.0.0.1:0     # any free port; the start line says which
  python udp_server.py --listen [::1]:9999 --catalog prices.csv -v
  python udp_server.py --watch --stats-interval 60 --metrics-listen 127.0.0.1:9100 --log-format json
  kill -HUP <pid>                               # reload the catalog (validated first)
  python udp_server.py --workers 2              # one process per core, SO_REUSEPORT
  python udp_server.py --new-key 7 >> keys.txt  # a new random 256-bit key, id 7 (chmod 600 keys.txt)
  python udp_server.py --keys keys.txt          # answer only requests signed with one of these keys

exit codes: 0 stopped cleanly (SIGINT/SIGTERM), 2 bad arguments, 4 bad catalog, 5 cannot bind, 6 bad keys file
"""
EXIT_OK, EXIT_USAGE, EXIT_CATALOG, EXIT_BIND, EXIT_KEYS = 0, 2, 4, 5, 6
MIN_STATS_INTERVAL_S = 0.1


def _non_negative(text: str) -> float:
    value = finite_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def _seconds_flag(flag: str) -> Callable[[str], float]:
    return lambda text: seconds(text, flag)


def _stats_interval(text: str) -> float:
    """0 (only at exit) or at least MIN_STATS_INTERVAL_S: a shorter one would flood the log."""
    value = seconds(text, "--stats-interval")
    if 0 < value < MIN_STATS_INTERVAL_S:
        raise argparse.ArgumentTypeError(f"--stats-interval must be 0 (only at exit) or >= {MIN_STATS_INTERVAL_S:g} s")
    return value


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 5) or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text[:32]!r} is not a port (0-65535)")
    return int(text)


def _key_id(text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 10) or int(text) > MAX_KEY_ID:
        raise argparse.ArgumentTypeError(f"key id {text[:16]!r} must be a whole number from 0 to {MAX_KEY_ID}")
    return int(text)


def add_auth_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("authentication (HMAC-SHA256 over every datagram, see docs/operations.md)")
    g.add_argument(
        "--keys",
        default=None,
        metavar="FILE",
        help="answer only requests signed with a key in FILE ('key_id base64-secret' per line, mode 600; "
        "reloaded with the catalog: SIGHUP, --watch); unsigned requests are dropped",
    )
    g.add_argument(
        "--allow-anonymous",
        action="store_true",
        help="with --keys: also answer unsigned requests (unsigned, as without --keys), e.g. during a migration",
    )
    g.add_argument(
        "--new-key",
        type=_key_id,
        default=None,
        metavar="KEY_ID",
        help="print a keys-file line with a new random 256-bit secret for KEY_ID and exit",
    )


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog_name(prog, "udp_server.py"),
        description="Serve price quotes over UDP from a CSV catalog.",
        epilog=examples_for(prog_name(prog, "udp_server.py"), EXAMPLES, "python udp_server.py"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_version(p)
    p.add_argument(
        "--listen",
        type=listen_address_arg,
        default=None,
        metavar="HOST:PORT",
        help="UDP address to serve on (default 127.0.0.1:9999; [::1]:9999 for IPv6; port 0: any free port)",
    )
    p.add_argument("--host", default=None, help="address to bind, the older spelling of --listen (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=None, help="UDP port, with --host (default 9999; 0 picks a free one)")
    p.add_argument(
        "--catalog",
        default=None,
        metavar="FILE",
        help="catalog CSV with item,price columns (default ./catalog.csv, or the sample shipped with udp-price "
        "when the working directory has none)",
    )
    p.add_argument(
        "--log-level", default=None, choices=["debug", "info", "warning", "error"], help="(default info; or -v / -q)"
    )
    p.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="text: log lines on stderr with ISO 8601 times; json: JSON lines only on stdout (start/stop) "
        "and stderr (logs) (default text)",
    )
    add_verbosity(p)
    p.add_argument(
        "--rate",
        type=_non_negative,
        default=40_000,
        metavar="PER_S",
        help="requests per second allowed per source IP (default 40000; 0 turns limiting off)",
    )
    p.add_argument(
        "--burst", type=_non_negative, default=80_000, metavar="N", help="token bucket size per source (default 80000)"
    )
    p.add_argument(
        "--cache-size",
        type=int,
        default=100_000,
        metavar="N",
        help="replies kept for retransmitted requests (default 100000; 0 turns the cache off)",
    )
    p.add_argument(
        "--cache-age",
        type=_seconds_flag("--cache-age"),
        default=60.0,
        metavar="S",
        help="seconds a cached reply lives (default 60)",
    )
    p.add_argument(
        "--watch",
        action="store_true",
        help=f"reload the catalog when the file changes (checked every {WATCH_POLL_S} s; a file replaced by "
        "a rename is loaded at once, one edited in place once it has settled)",
    )
    p.add_argument(
        "--watch-settle",
        type=_seconds_flag("--watch-settle"),
        default=WATCH_SETTLE_S,
        metavar="S",
        help=f"with --watch: seconds a file edited in place must stay unchanged before it is loaded "
        f"(default {WATCH_SETTLE_S:g})",
    )
    p.add_argument(
        "--stats-interval",
        type=_stats_interval,
        default=0,
        metavar="S",
        help=f"log counters every this many seconds, 0 or {MIN_STATS_INTERVAL_S:g} to 86400 (default 0: only at exit)",
    )
    p.add_argument(
        "--workers", type=int, default=1, metavar="N", help="processes sharing the port with SO_REUSEPORT (default 1)"
    )
    p.add_argument(
        "--metrics-listen",
        type=listen_address_arg,
        default=None,
        metavar="HOST:PORT",
        help="serve Prometheus metrics over HTTP at http://HOST:PORT/metrics (off by default; port 0: any free port)",
    )
    p.add_argument(
        "--metrics-port",
        type=_port,
        default=None,
        metavar="PORT",
        help="the same as --metrics-listen 127.0.0.1:PORT",
    )
    add_auth_flags(p)
    return p


def parse_args(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    p = build_parser(prog)
    args = p.parse_args(argv)
    if args.catalog is None:
        args.catalog = default_catalog()
    if args.listen is not None and (args.host is not None or args.port is not None):
        p.error("--listen HOST:PORT replaces --host and --port; give one or the other")
    if args.listen is None:
        args.listen = (args.host or "127.0.0.1", 9999 if args.port is None else args.port)
    args.host, args.port = args.listen
    if args.metrics_listen is not None and args.metrics_port is not None:
        p.error("--metrics-listen and --metrics-port name the same thing; give one")
    if args.metrics_port is not None:
        args.metrics_listen = ("127.0.0.1", args.metrics_port)
    steps = verbosity(p, args)
    if steps and args.log_level is not None:
        p.error("-v/-q and --log-level both set the log level; give one")
    levels = ["error", "warning", "info", "debug"]
    args.log_level = args.log_level or levels[max(0, min(3, 2 + steps))]
    if args.cache_size < 0:
        p.error("--cache-size must be >= 0")
    if args.workers < 1:
        p.error("--workers must be at least 1")
    if args.workers > 1 and args.metrics_listen is not None:
        p.error("--metrics-listen needs --workers 1 (each worker keeps its own counters)")
    if args.allow_anonymous and args.keys is None:
        p.error("--allow-anonymous needs --keys (without keys every request is anonymous already)")
    return args


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parse_args(argv, prog)
    if args.new_key is not None:
        print(new_key_line(args.new_key, secrets.token_bytes(NEW_KEY_BYTES)))
        return EXIT_OK
    setup_logging(args.log_level, args.log_format)
    try:
        args.auth_keys = read_keys_file(args.keys) if args.keys is not None else None
    except KeyFileError as e:
        print(f"udp_server: bad keys file: {e}", file=sys.stderr)
        return EXIT_KEYS
    try:
        # One read: what is parsed is exactly what is recorded as loaded (its hash and stat), so a
        # file replaced while this parse runs is seen as changed by SIGHUP and --watch.
        st, raw = read_catalog_file(args.catalog)
        catalog = parse_catalog_bytes(raw, args.catalog)
    except CatalogError as e:
        print(f"udp_server: bad catalog {e.path}:", file=sys.stderr)
        for problem in e.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CATALOG
    loaded_from = FileState.of(st, raw)
    del raw
    return_freed_memory()  # the parse's temporaries: freed, but kept by the allocator until trimmed
    try:
        sock = bind_socket(args.host, args.port, reuse_port=args.workers > 1)
    except OSError as e:
        print(f"udp_server: cannot bind {format_address(args.listen)}: {e.strerror or e}", file=sys.stderr)
        return EXIT_BIND
    if args.workers > 1:
        return run_workers(args, catalog, sock, loaded_from)
    server, control = build_server(args, catalog), Control()
    # Handlers first, start line after: whoever reacts to the start line with a SIGHUP must find
    # a server that reloads, not one killed by the signal's default action.
    with sock, handle_signals(control):
        ops = operations(server, args, control.wake, loaded_from)
        timing = DurationHistogram() if args.metrics_listen is not None else None
        metrics: dict[str, str] = {}
        if args.metrics_listen is not None:
            try:
                metrics_at = start_metrics(server, args.metrics_listen, timing)
            except OSError as e:
                where = format_address(args.metrics_listen)
                print(f"udp_server: cannot serve metrics on {where}: {e.strerror or e}", file=sys.stderr)
                return EXIT_BIND
            log.info("metrics on http://%s/metrics", metrics_at, extra={"event": "metrics"})
            # In the start line too: with port 0 and -q it is the only place the chosen port is told.
            metrics["metrics"] = f"http://{metrics_at}/metrics"
        address = format_address(sock.getsockname())
        announce(
            f"udp_server: listening on {address} (udp), {len(catalog)} items, "
            f"catalog version {catalog.version}, catalog {os.path.abspath(args.catalog)}"
            + _auth_words(args)
            + "".join(f", metrics {url}" for url in metrics.values()),
            args.log_format,
            "listening",
            address=address,
            items=len(catalog),
            version=catalog.version,
            **metrics,
        )
        serve(sock, server, control, duties=ops, timing=timing)
        ops.close()
    announce(f"udp_server: stopped; {server.summary()}", args.log_format, "stopped", counters=server.counters())
    control.close()
    return EXIT_OK


def _auth_words(args: argparse.Namespace) -> str:
    if not args.auth_keys:
        return ""
    anonymous = " (anonymous allowed)" if args.allow_anonymous else ""
    return f", {len(args.auth_keys)} key(s) from {os.path.abspath(args.keys)}{anonymous}"


if __name__ == "__main__":
    raise SystemExit(main())
