"""``udp-price-client``: quotes, the catalog listing, bulk CSV quoting and the quote page."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from udp_price import web
from udp_price.address import format_address
from udp_price.auth import Key, read_client_key
from udp_price.catalog import format_money
from udp_price.cli import bulk as bulk_command
from udp_price.cli.client_args import (
    at_least_one,
    batch_arg,
    deadline_arg,
    parse_quantity,
    retries_arg,
    timeout_arg,
)
from udp_price.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_NO_ANSWER,
    EXIT_OK,
    EXIT_OUTPUT,
    EXIT_STATUS,
    EXIT_USAGE,
    MAX_SECONDS,
    MAX_TIMEOUT_S,
    JsonAwareParser,
    add_verbosity,
    add_version,
    address_arg,
    examples_for,
    json_failure,
    listen_address_arg,
    policy_from_args,
    prog_name,
    verbosity,
    wants_json,
)
from udp_price.client.api import NoAnswer, describe_status, list_once, quote_once
from udp_price.client.retry import RetryPolicy
from udp_price.errors import KeyFileError, QuoteError
from wire_format import MAX_BATCH, MAX_QUANTITY

EXAMPLES = f"""\
examples:
  python udp_client.py quote apple 3                   # 3 x apple @ 0.50 = 1.50
  python udp_client.py quote "café crème" 2
  python udp_client.py quote banana 12 --json          # one JSON object on stdout (flags go anywhere)
  python udp_client.py --server [::1]:9999 --timeout 0.1 --retries 6 --deadline 3 quote pear 1
  python udp_client.py bulk orders.csv -o quotes.csv   # every row, in order; summary on stderr
  python udp_client.py items -q --server [::1]:9999     # the server's catalog, sorted by name
  python udp_client.py web --listen 127.0.0.1:8080     # a quote page in the browser

quantity: a whole number from 1 to {MAX_QUANTITY} (1 to 10 digits, no sign); anything else is
          rejected before sending (quote: exit 2; bulk: BAD_ROW)

exit codes:
  {EXIT_OK}  quoted
  {EXIT_STATUS}  the server answered with an error (unknown item, total too large, ...)
  {EXIT_USAGE}  bad arguments (including a quantity that breaks the rule above); nothing was sent
  {EXIT_NO_ANSWER}  no valid answer within the retries / deadline (server down or network lossy)
  for bulk: 0 every row OK, 1 some rows failed (bad rows or server errors), 2 unusable input,
            3 the server could not be reached, 4 output not writable, 130 interrupted (Ctrl-C, SIGTERM)
"""
BULK_EPILOG = f"""\
examples:
  python udp_client.py bulk orders.csv > quotes.csv
  python udp_client.py bulk --format jsonl --batch 32 --window 128 orders.csv -o quotes.jsonl
  cat orders.csv | python udp_client.py bulk - --no-progress
  python udp_client.py bulk --encoding latin-1 --delimiter ';' export.csv -o quotes.csv

One record out per record in, in order, every input cell kept. Bad records (missing item, bad
quantity, item over 32 bytes, broken quoting, bytes not valid in --encoding) are written with
status BAD_ROW and their line number in 'error'; the run goes on. Quoted fields may span lines
(at most 100 lines / 16 MiB per record). A result column whose name the input already uses is
written as quote_<name>. Retransmissions share a budget (10 per second + 20% of requests, 3 back
per reply) that only delays them; a server that answers nothing for a whole --deadline fails the
rest of the run at once. Ctrl-C / SIGTERM stop sending at once; the rest of the file is written
as NOT_ATTEMPTED.

exit codes: {EXIT_OK} all rows OK, {EXIT_STATUS} some rows failed, {EXIT_USAGE} unusable input or flags (also: output
            is the input, read error), {EXIT_NO_ANSWER} server unreachable (no reply at all),
            {EXIT_OUTPUT} output not writable (open, write, flush or close), {EXIT_INTERRUPTED} interrupted
"""


def add_global_flags(p: argparse.ArgumentParser, on_subcommand: bool = False) -> None:
    """The flags every subcommand shares. The top-level parser carries the defaults; each
    subcommand gets the same flags with default SUPPRESS, so ``quote apple 3 --json`` and
    ``--json quote apple 3`` mean the same and a flag given before the subcommand is not reset."""
    defaults = RetryPolicy()

    def default(value: object) -> object:
        return argparse.SUPPRESS if on_subcommand else value

    g = p.add_argument_group("shared flags (before or after the subcommand)")
    g.add_argument(
        "--server",
        type=address_arg,
        default=default(("127.0.0.1", 9999)),
        metavar="HOST:PORT",
        help="quote server (default 127.0.0.1:9999; IPv6 as [::1]:9999) - dig's @server",
    )
    g.add_argument(
        "--timeout",
        type=timeout_arg,
        default=default(defaults.initial_timeout_s),
        metavar="SECONDS",
        help=f"first attempt's timeout in seconds, later ones adapt to the measured round trip "
        f"(default {defaults.initial_timeout_s:g}, at most {MAX_TIMEOUT_S:g}) - dig +timeout",
    )
    g.add_argument(
        "--retries",
        type=retries_arg,
        default=default(defaults.max_attempts - 1),
        metavar="N",
        help=f"retransmissions after the first attempt (default {defaults.max_attempts - 1}) - dig +retry",
    )
    g.add_argument(
        "--deadline",
        type=deadline_arg,
        default=default(defaults.deadline_s),
        metavar="SECONDS",
        help=f"overall seconds per request, all attempts included (default {defaults.deadline_s:g}, "
        f"at most {MAX_SECONDS:g}) - curl --max-time",
    )
    g.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="machine-readable stdout, failures included: quote one object, items one array "
        "(or one error object), bulk JSON lines (= --format jsonl)",
    )
    g.add_argument(
        "--key-file",
        default=default(None),
        metavar="FILE",
        help=f"sign every request with the key in FILE (one 'key_id base64-secret' line, mode 600) and "
        f"believe only replies signed with it (default: ${KEY_FILE_ENV}, else unsigned) - dig -k",
    )
    add_verbosity(p, on_subcommand=on_subcommand)


def _subcommand(sub: argparse._SubParsersAction[JsonAwareParser], name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand parser that also accepts the shared flags; add its own flags to what this returns."""
    parser = sub.add_parser(name, **kwargs)
    add_global_flags(parser, on_subcommand=True)
    return parser


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = JsonAwareParser(
        prog=prog_name(prog, "udp_client.py"),
        description="Get price quotes from a udp-price server over UDP, with timeouts and retransmission.",
        epilog=examples_for(prog_name(prog, "udp_client.py"), EXAMPLES, "python udp_client.py"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_version(p)
    add_global_flags(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    q = _subcommand(sub, "quote", help="quote one item", description="Quote QUANTITY x ITEM.")
    q.add_argument("item", help="item name as in the catalog (quote names with spaces)")
    q.add_argument("quantity", type=parse_quantity, help=f"whole number, 1 to {MAX_QUANTITY}")
    it = _subcommand(
        sub,
        "items",
        help="list the server's catalog",
        description="List every item the server quotes, "
        "with its unit price, sorted by name (one line each; --json: one JSON array). "
        "--prefix and --limit look items up without listing the whole catalog.",
    )
    it.add_argument(
        "--prefix",
        type=_search_prefix,
        default="",
        help="only items whose name starts with PREFIX (the server filters; leading spaces are dropped, "
        "a PREFIX of only spaces is refused)",
    )
    it.add_argument("--limit", type=at_least_one, default=None, help="at most N items (only the pages needed)")
    w = _subcommand(
        sub,
        "web",
        help="serve a quote page on loopback",
        description="Serve a small web page for quotes: pick an item, enter a quantity, see the total. "
        "The page talks HTTP to this process; this process talks UDP to the quote server.",
    )
    w.add_argument(
        "--listen",
        type=listen_address_arg,
        default=("127.0.0.1", 8080),
        metavar="HOST:PORT",
        help="HTTP address for the page (default 127.0.0.1:8080; port 0: any free port)",
    )
    b = _subcommand(
        sub,
        "bulk",
        help="quote every row of a CSV file",
        description="Quote every row of ORDERS (a CSV with 'item' and 'quantity' columns; '-' for stdin). "
        "Writes one row per input row, in order, with unit_price, total, status, attempts, error added.",
        epilog=examples_for(prog_name(prog, "udp_client.py"), BULK_EPILOG, "python udp_client.py"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument("orders", help="orders CSV file, or - for stdin")
    b.add_argument(
        "-o", "--output", default="-", metavar="FILE", help="where to write results (default - : stdout) - curl -o"
    )
    b.add_argument(
        "--format", choices=["csv", "jsonl"], default=None, help="output format (default csv; jsonl with --json)"
    )
    b.add_argument(
        "--window",
        type=at_least_one,
        default=64,
        metavar="N",
        help="requests in flight at most (default 64; with --cc none, always this many)",
    )
    b.add_argument(
        "--cc",
        choices=["auto", "none"],
        default="auto",
        help="congestion control (default auto: a window from 4 up to --window that shrinks on the server's "
        "overload mark, BUSY and queueing delay, see docs/congestion.md; none: a fixed --window)",
    )
    b.add_argument(
        "--batch",
        type=batch_arg,
        default=32,
        metavar="N",
        help=f"rows per request, 1 to {MAX_BATCH}; 1 sends single quote requests (default 32)",
    )
    b.add_argument(
        "--encoding",
        default="utf-8",
        metavar="NAME",
        help="input encoding, any ASCII-compatible one (default utf-8; a UTF-8 BOM is skipped; e.g. latin-1, cp1252)",
    )
    b.add_argument(
        "--delimiter",
        choices=["auto", ",", ";", "tab"],
        default="auto",
        help="field delimiter (default auto: whichever of , ; tab makes the header name item and quantity)",
    )
    b.add_argument(
        "--no-progress", action="store_true", help="no progress bar (it is drawn on stderr, only when a terminal)"
    )
    return p


def run_quote(args: argparse.Namespace) -> int:
    asked = {"item": args.item, "quantity": args.quantity, "unit_price": None, "total": None}
    try:
        result = quote_once(args.server, args.item, args.quantity, policy_from_args(args), args.key)
    except ValueError as e:  # the request cannot be encoded, e.g. item longer than the wire field
        if args.json:
            json_failure("BAD_REQUEST", str(e), **asked, attempts=0)
        print(f"udp_client: {e}", file=sys.stderr)
        return EXIT_USAGE
    except NoAnswer as e:
        if args.json:
            json_failure("NO_ANSWER", str(e), **asked, attempts=e.attempts)
        print(f"udp_client: {e}", file=sys.stderr)
        return EXIT_NO_ANSWER
    if args.json:
        print(json.dumps(result.as_json(), ensure_ascii=False))
    elif result.ok:
        print(f"{result.quantity} x {result.item} @ {format_money(result.unit_price)} = {format_money(result.total)}")
    if args.verbosity > 0:
        print(
            f"udp_client: {result.status.name} from {format_address(args.server)} after {result.attempts} "
            f"attempt(s), {result.latency_s * 1000:.2f} ms",
            file=sys.stderr,
        )
    if not result.ok:
        print(f"udp_client: {describe_status(result)}", file=sys.stderr)
        return EXIT_STATUS
    return EXIT_OK


KEY_FILE_ENV = "UDP_PRICE_KEY_FILE"


def load_key(flag_value: str | None) -> Key | None:
    """The client's key: --key-file, else $UDP_PRICE_KEY_FILE, else None (unsigned); KeyFileError if bad.
    An empty value is refused, not read as "no key": a deployment whose secret failed to render
    must not quietly send unsigned requests."""
    where, path = ("--key-file", flag_value) if flag_value is not None else (KEY_FILE_ENV, os.environ.get(KEY_FILE_ENV))
    if path is None:
        return None
    if not path.strip():
        raise KeyFileError(f"{where} is set but empty: name a key file, or unset it to send unsigned requests")
    return read_client_key(path)


def check_combinations(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Flag combinations that make no sense are refused with exit 2 instead of being ignored."""
    args.verbosity = verbosity(parser, args)
    if args.command == "web" and args.json:
        parser.error("--json does not apply to web (the page serves its own JSON under /api/)")
    if args.command == "bulk":
        if args.json and args.format == "csv":
            parser.error("--json and --format csv contradict each other (--json means --format jsonl)")
        args.format = args.format or ("jsonl" if args.json else "csv")
        if args.verbosity < 0:
            args.no_progress = True


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = build_parser(prog)
    JsonAwareParser.json_errors = wants_json(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    check_combinations(parser, args)
    try:
        args.key = load_key(args.key_file)
    except KeyFileError as e:
        if args.json:
            json_failure("BAD_KEY_FILE", str(e))
        print(f"udp_client: bad key file: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "quote":
            return run_quote(args)
        if args.command == "bulk":
            return bulk_command.run(args)
        if args.command == "items":
            return run_items(args)
        if args.command == "web":
            return web.serve(args.listen, args.server, policy_from_args(args), args.key)
    except KeyboardInterrupt:
        print("udp_client: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. 'items | head': the reader has gone, so stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OUTPUT
    return EXIT_USAGE


def _search_prefix(text: str) -> str:
    # Leading spaces are dropped (names never start with one), so "  " would become the empty
    # prefix and list the whole catalog: surely not what was meant. A usage error instead.
    if text and not text.strip():
        raise argparse.ArgumentTypeError("is only spaces; names never start with a space (omit --prefix to list all)")
    return text


def run_items(args: argparse.Namespace) -> int:
    try:
        version, entries = list_once(args.server, policy_from_args(args), args.prefix, args.limit, args.key)
    except ValueError as e:  # a prefix the wire cannot carry (over 32 bytes of UTF-8, or a NUL)
        if args.json:
            json_failure("USAGE", str(e))
        print(f"udp_client: {e}", file=sys.stderr)
        return EXIT_USAGE
    except QuoteError as e:
        if args.json:
            json_failure("NO_ANSWER" if isinstance(e, NoAnswer) else "ERROR", str(e))
        print(f"udp_client: {e}", file=sys.stderr)
        return EXIT_NO_ANSWER
    if args.json:
        print(json.dumps([{"item": i, "unit_price": format_money(p)} for i, p in entries], ensure_ascii=False))
        return EXIT_OK
    width = max((len(i) for i, _ in entries), default=0)
    for item, price in entries:
        print(f"{item:<{width}}  {format_money(price):>10}")
    if args.verbosity >= 0:
        print(f"udp_client: {len(entries)} items, catalog version {version}", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
