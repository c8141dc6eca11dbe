"""What the command-line front ends share: the program name, --version, the default catalog and
the argparse adapters for addresses."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from udp_price import __version__
from udp_price.address import BadAddress, parse_address
from udp_price.client.retry import RetryPolicy

# The client's exit codes (quote, items, bulk): documented in its --help.
EXIT_OK, EXIT_STATUS, EXIT_USAGE, EXIT_NO_ANSWER, EXIT_OUTPUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130

# One bound for every time flag of every command (exit 2 beyond): past a day a typo, not a wish,
# is more likely, and a larger or infinite number overflows the event loop's timers.
MAX_SECONDS = 86_400.0
MAX_TIMEOUT_S = 60.0
"""A single attempt's timeout: longer is never a round trip on a working network."""

SAMPLE_CATALOG = Path(__file__).resolve().parent.parent / "sample_catalog.csv"
"""The sample catalog shipped inside the package: the default only when ./catalog.csv is missing."""


def prog_name(given: str | None, fallback: str) -> str:
    """The name to show in usage lines: what the caller says (``python -m udp_price server``),
    else the name this process was invoked as (``udp-price-server``, ``udp_server.py``)."""
    if given:
        return given
    invoked = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return invoked if invoked and invoked not in ("-c", "__main__.py") else fallback


def examples_for(prog: str, epilog: str, written_as: str) -> str:
    """The examples epilog with each ``written_as`` command line (``python udp_server.py``) in
    the form this process was invoked as, so the examples can be pasted as they are."""
    return epilog.replace(written_as, f"python {prog}" if prog.endswith(".py") else prog)


def add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"%(prog)s (udp-price) {__version__}")


def add_verbosity(parser: argparse.ArgumentParser, on_subcommand: bool = False) -> None:
    """-v / -q, as dig, curl and tc users expect: each -v one step louder, each -q one step quieter.
    A subcommand's copy counts into its own dest, so ``-v quote ... -v`` adds up to two steps
    (argparse would otherwise let the subcommand's count replace the one given before it)."""
    group = parser.add_argument_group("output")
    suffix = "_after" if on_subcommand else ""
    more, less = "more detail on stderr (repeatable)", "only errors on stderr (repeatable)"
    group.add_argument("-v", "--verbose", dest=f"verbose{suffix}", action="count", default=0, help=more)
    group.add_argument("-q", "--quiet", dest=f"quiet{suffix}", action="count", default=0, help=less)


def verbosity(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """-v minus -q, counted before and after a subcommand; both at once is refused (exit 2), as a contradiction."""
    verbose = int(args.verbose) + int(getattr(args, "verbose_after", 0))
    quiet = int(args.quiet) + int(getattr(args, "quiet_after", 0))
    if verbose and quiet:
        parser.error("-v/--verbose and -q/--quiet contradict each other")
    return verbose - quiet


def default_catalog() -> str:
    """./catalog.csv when the working directory has one, else the sample shipped with the package.

    "Has one" means any directory entry of that name, a broken or looping symlink included: a
    release link pointing at a missing file must fail loudly (exit 4), never serve sample prices."""
    return "catalog.csv" if os.path.lexists("catalog.csv") else str(SAMPLE_CATALOG)


def address_arg(text: str) -> tuple[str, int]:
    """argparse type for a peer HOST:PORT (port 0 refused)."""
    try:
        return parse_address(text)
    except BadAddress as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def listen_address_arg(text: str) -> tuple[str, int]:
    """argparse type for an address to listen on (port 0: any free port)."""
    try:
        return parse_address(text, allow_port_zero=True)
    except BadAddress as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def policy_from_args(args: argparse.Namespace) -> RetryPolicy:
    base = RetryPolicy()
    return RetryPolicy(
        initial_timeout_s=args.timeout,
        max_attempts=args.retries + 1,
        deadline_s=args.deadline,
        min_timeout_s=min(base.min_timeout_s, args.timeout),
        max_timeout_s=max(base.max_timeout_s, args.timeout),
    )


def finite_number(text: str, what: str = "a number") -> float:
    """float(text), refusing nan, inf and over-long texts: argparse type helpers build on it."""
    value = None
    if len(text) <= 32:
        try:
            value = float(text)
        except ValueError:
            value = None
    if value is None or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text[:32]!r} is not {what} (a finite number)")
    return value


def seconds(text: str, flag: str, low: float = 0.0, high: float = MAX_SECONDS, low_included: bool = True) -> float:
    """A number of seconds in [low, high] (or (low, high]), finite: nan and inf are refused."""
    value = finite_number(text, "a number of seconds")
    if value > high:
        raise argparse.ArgumentTypeError(f"{flag} must be at most {high:g} s, not {text[:32]!r}")
    if value < low or (value == low and not low_included):
        above = f">= {low:g}" if low_included else f"greater than {low:g}"
        raise argparse.ArgumentTypeError(f"{flag} must be {above}, not {text[:32]!r}")
    return value


def json_failure(status: str, error: str, **fields: Any) -> None:
    """A failure as one JSON object on stdout, so a script reading --json output sees every outcome."""
    print(json.dumps({**fields, "status": status, "error": error}, ensure_ascii=False), flush=True)


def wants_json(argv: list[str]) -> bool:
    """--json among the options (not after '--', where it would be an operand)."""
    options = argv[: argv.index("--")] if "--" in argv else argv
    return "--json" in options


class JsonAwareParser(argparse.ArgumentParser):
    """Usage errors (exit 2) also as one JSON object on stdout when --json was given: a usage error
    is found while parsing, before argparse could tell the caller whether --json was set."""

    json_errors = False
    """Set by the command's main() from its argv; shared by the subcommands' parsers."""

    def error(self, message: str) -> NoReturn:
        if JsonAwareParser.json_errors:
            json_failure("USAGE", f"{self.prog}: {message}")
        super().error(message)
