"""The quote server with a fixed service time per request: a server whose capacity is set.

    python bench/slow_server.py --service-us 300 --listen 127.0.0.1:0 --catalog catalog.csv

Every argument but ``--service-us`` goes to ``udp_server.py``. Each datagram the server handles
first waits ``--service-us`` microseconds (a blocking sleep in the serving loop, as a server that
looks each price up in a slow database would), so the server answers at most about
1 / service time requests per second whatever the host's load, and its capacity does not depend
on how deep its queue is: per wake-up costs (tens of microseconds) are small beside the service
time. bench/congestion_bench.py stages "more offered load than the server can serve" with it
(docs/congestion.md, "Straight at the server").

The sleep uses no CPU, so the clients keep both cores; the process's timer slack is set to 1 us
(prctl PR_SET_TIMERSLACK, Linux) so that a sleep ends when asked, not up to 50 us later.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from udp_price.cli.server import main as server_main
from udp_price.server.core import QuoteServer

PR_SET_TIMERSLACK = 29


def tighten_timer_slack() -> None:
    """Sleeps end within about 1 us of when they were asked to (Linux only; elsewhere a no-op)."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(libc_name, use_errno=True).prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0)


def slow_down(service_s: float) -> None:
    """Every datagram QuoteServer handles costs ``service_s`` seconds of the serving loop first."""
    handle = QuoteServer.handle_datagram

    def handle_slowly(self: QuoteServer, data: bytes, addr: object, now: float) -> bytes | None:
        time.sleep(service_s)
        return handle(self, data, addr, now)  # type: ignore[arg-type]

    QuoteServer.handle_datagram = handle_slowly  # type: ignore[method-assign]


def service_time_us(text: str) -> float:
    """--service-us: a number of microseconds from 0 to 1,000,000."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1000000, not {text}")
    return value


PARSER = argparse.ArgumentParser(
    prog="slow_server.py",
    description="The quote server with a fixed service time per request; every other flag goes to "
    "udp_server.py (its help follows).",
    add_help=False,
)
PARSER.add_argument("--service-us", type=service_time_us, default=300.0, metavar="US", help="default 300")


def split_service_time(argv: list[str]) -> tuple[float, list[str]]:
    """(service time in seconds, the rest of argv); a bad --service-us exits 2 with one line."""
    known, rest = PARSER.parse_known_args(argv)
    return float(known.service_us) / 1e6, rest


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "-h" in args or "--help" in args:
        PARSER.print_help()
        print()
    service_s, rest = split_service_time(args)
    tighten_timer_slack()
    slow_down(service_s)
    return server_main(rest, prog="slow_server.py")


if __name__ == "__main__":
    sys.exit(main())
