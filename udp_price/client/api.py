"""udp-price client: quotes over UDP that survive loss, duplication, reordering and forgery.

The retry logic lives in retry.py (pure, clock passed in); this module is the
asyncio socket shell around it, a small Python API and the command line:

    python udp_client.py quote "café crème" 2
    python udp_client.py --json --server 127.0.0.1:9999 quote apple 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any

from catalog import format_money
from client_session import Answered, ClientSession, Event, Failed
from quantity import BadQuantity, check_quantity
from quantity import parse_quantity as quantity_rule
from recovery import RetryBudget, RttEstimator
from retry import Outcome, RetryPolicy
from wire_format import (
    MAX_BATCH,
    MAX_QUANTITY,
    BatchReply,
    BatchRequest,
    LineResult,
    ListReply,
    ListRequest,
    QuoteError,
    QuoteReply,
    QuoteRequest,
    Request,
    Status,
    encode_batch_request,
    encode_request,
    normalize_item,
)

Address = tuple[str, int]


class NoAnswer(QuoteError):
    """No matching reply arrived before the deadline or the last attempt's timeout."""

    def __init__(
        self,
        server: Address,
        attempts: int,
        elapsed_s: float,
        outcome: Outcome,
        refused: bool,
        status: Status | None = None,
    ) -> None:
        why = {
            Outcome.DEADLINE: "deadline passed",
            Outcome.REFUSED: "nothing listens on that port",
            Outcome.UNREACHABLE: "the server answered nothing for a whole deadline",
            Outcome.BUDGET: "deadline passed while the retry budget held retransmissions back",
            Outcome.VERSION: "the server speaks another protocol version",
        }.get(outcome, "all attempts timed out")
        hint = " (ICMP port unreachable: is the server running?)" if refused else ""
        if status is not None and outcome is not Outcome.VERSION:
            hint += f" (the server kept answering {status.name}: our datagrams arrive damaged)"
        super().__init__(
            f"no answer from {format_address(server)} after {attempts} attempt(s) in {elapsed_s:.2f} s: {why}{hint}"
        )
        self.attempts = attempts
        self.elapsed_s = elapsed_s
        self.outcome = outcome


@dataclass(frozen=True)
class QuoteResult:
    """A reply matched to its request. Money in integer minor units; check ``ok`` before using it."""

    item: str
    quantity: int
    status: Status
    unit_price: int
    total: int
    attempts: int
    request_id: int
    latency_s: float
    catalog_version: int

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    def as_json(self) -> dict[str, Any]:
        """Money as decimal strings; null in a failure (whatever the reply's money fields held)."""
        return {
            "item": self.item,
            "quantity": self.quantity,
            "unit_price": format_money(self.unit_price) if self.ok else None,
            "total": format_money(self.total) if self.ok else None,
            "status": self.status.name,
            "attempts": self.attempts,
            "request_id": f"{self.request_id:016x}",
            "latency_ms": round(self.latency_s * 1000, 3),
            "catalog_version": self.catalog_version,
        }


@dataclass(frozen=True)
class BatchResult:
    """Per-line results of one batch, in the order the lines were given."""

    lines: tuple[tuple[str, int], ...]
    results: tuple[LineResult, ...]
    attempts: int
    request_id: int
    latency_s: float
    catalog_version: int


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, client: QuoteClient) -> None:
        self.client = client

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.client._on_datagram(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable on a connected socket; the session decides what it means.
        self.client._on_error()


class QuoteClient:
    """Async quote client over one connected UDP socket; many quotes may be in flight at once.

    A thin asyncio shell: every decision (timers, retransmissions, loss detection, the retry
    budget, BUSY, ICMP errors, giving up, which replies to believe) is made by the pure
    ``client_session.ClientSession``; this class moves bytes and reads the clock. The socket
    is connect()ed to the server, so the kernel discards datagrams from any other address.

        async with QuoteClient(("127.0.0.1", 9999)) as client:
            result = await client.quote("apple", 3)
    """

    def __init__(
        self,
        server: Address,
        policy: RetryPolicy | None = None,
        budget: RetryBudget | None = None,
        local_addr: tuple[str, int] | None = None,
    ) -> None:
        self.server = server
        self.local_addr = local_addr
        """Source address to bind, e.g. ("127.0.0.2", 0); None lets the kernel choose."""
        self.policy = policy or RetryPolicy()
        self.session = ClientSession(self.policy, 0.0, budget)
        self._futures: dict[int, asyncio.Future[Event]] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    @property
    def stats(self) -> Counter[str]:
        return self.session.stats

    @property
    def rtt(self) -> RttEstimator:
        return self.session.rtt

    @property
    def unreachable(self) -> bool:
        """True once the session has judged the server gone: new requests fail at once."""
        return self.session.unreachable is not None

    async def __aenter__(self) -> QuoteClient:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), remote_addr=self.server, local_addr=self.local_addr
        )
        self._transport, self._loop = transport, loop
        self.session = ClientSession(self.policy, loop.time(), self.session.budget)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def _new_request_id(self) -> int:
        while True:
            rid = secrets.randbits(64)
            if rid not in self._futures and not self.session.knows(rid):
                return rid

    async def quote(self, item: str, quantity: int) -> QuoteResult:
        """Quote ``quantity`` x ``item``. Raises NoAnswer when no valid reply comes in time,
        ValueError when the request cannot be encoded (item too long) or the quantity breaks the
        rule in quantity.py (a whole number from 1 to MAX_QUANTITY): nothing is sent then."""
        check_quantity(quantity)
        request = QuoteRequest(self._new_request_id(), normalize_item(item), quantity)
        encode_request(request)  # a request that cannot be encoded is the caller's ValueError, now
        answered = await self._call(request)
        reply = answered.reply
        assert isinstance(reply, QuoteReply)
        return QuoteResult(
            item=request.item,
            quantity=request.quantity,
            status=reply.status,
            unit_price=reply.unit_price,
            total=reply.total,
            attempts=answered.attempts,
            request_id=request.request_id,
            latency_s=answered.latency_s,
            catalog_version=reply.catalog_version,
        )

    async def quote_batch(self, lines: list[tuple[str, int]]) -> BatchResult:
        """Quote up to MAX_BATCH lines in one datagram; results in the same order.
        Raises NoAnswer or ValueError like ``quote``."""
        for _, quantity in lines:
            check_quantity(quantity)
        request = BatchRequest(self._new_request_id(), tuple((normalize_item(i), q) for i, q in lines))
        encode_batch_request(request)
        answered = await self._call(request)
        reply = answered.reply
        assert isinstance(reply, BatchReply)
        results = reply.results or tuple(LineResult(reply.status) for _ in request.lines)
        return BatchResult(
            request.lines, results, answered.attempts, request.request_id, answered.latency_s, reply.catalog_version
        )

    async def list_items(self) -> tuple[int, list[tuple[str, int]]]:
        """The server's whole catalog as (catalog version, [(item, unit price in cents)]) sorted by name.

        Pages are fetched concurrently; if the catalog changes between pages (a reload), the
        listing starts over so it never mixes two versions. Raises NoAnswer like ``quote``.
        """
        for _ in range(3):
            first = await self._list_page(0)
            pages = [first, *await asyncio.gather(*(self._list_page(p) for p in range(1, first.pages)))]
            if all(p.catalog_version == first.catalog_version and p.status is Status.OK for p in pages):
                return first.catalog_version, [entry for p in pages for entry in p.entries]
            self.stats["list_restarts"] += 1
        raise QuoteError("the catalog kept changing while it was being listed")

    async def _list_page(self, page: int) -> ListReply:
        answered = await self._call(ListRequest(self._new_request_id(), page))
        reply = answered.reply
        if not isinstance(reply, ListReply):
            raise QuoteError(
                f"the server answered {reply.status.name} to a list request: "
                "it may be a udp-price too old to list its catalog"
            )
        return reply

    async def _call(self, request: Request) -> Answered:
        """Hand ``request`` to the session and wait for its Answered event; NoAnswer on Failed."""
        if self._transport is None or self._loop is None:
            raise RuntimeError("use 'async with QuoteClient(...)' before quoting")
        future: asyncio.Future[Event] = self._loop.create_future()
        self._futures[request.request_id] = future
        self._pump(self.session.send(request, self._loop.time()))
        try:
            event = await future
        finally:
            self._futures.pop(request.request_id, None)
        if isinstance(event, Failed):
            raise NoAnswer(self.server, event.attempts, event.elapsed_s, event.outcome, event.refused, event.status)
        return event

    def _pump(self, events: list[Event]) -> None:
        """Send what the session queued, resolve finished requests, re-arm the one timer."""
        assert self._loop is not None
        if self._transport is not None:
            for data in self.session.datagrams_to_send():
                self._transport.sendto(data)
        for event in events:
            future = self._futures.get(event.request_id)
            if future is not None and not future.done():
                future.set_result(event)
        when = self.session.timer()
        if when is not None and (self._timer_at is None or when < self._timer_at):
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(when, self._on_timer)
            self._timer_at = when

    def _on_timer(self) -> None:
        assert self._loop is not None
        self._timer, self._timer_at = None, None
        self._pump(self.session.handle_timer(self._loop.time()))

    def _on_datagram(self, data: bytes) -> None:
        assert self._loop is not None
        self._pump(self.session.datagram_received(data, self._loop.time()))

    def _on_error(self) -> None:
        assert self._loop is not None
        self._pump(self.session.error_received(self._loop.time()))


def quote_once(server: Address, item: str, quantity: int, policy: RetryPolicy | None = None) -> QuoteResult:
    """Blocking convenience: one quote with a fresh client."""

    async def run() -> QuoteResult:
        async with QuoteClient(server, policy) as client:
            return await client.quote(item, quantity)

    return asyncio.run(run())


# ---------------------------------------------------------------- CLI

EXIT_OK, EXIT_STATUS, EXIT_USAGE, EXIT_NO_ANSWER, EXIT_OUTPUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
EXAMPLES = f"""\
examples:
  python udp_client.py quote apple 3                   # 3 x apple @ 0.50 = 1.50
  python udp_client.py quote "café crème" 2
  python udp_client.py --json quote banana 12          # one JSON object on stdout
  python udp_client.py --server [::1]:9999 --timeout 0.1 --retries 6 --deadline 3 quote pear 1
  python udp_client.py bulk orders.csv -o quotes.csv   # every row, in order; summary on stderr
  python udp_client.py items                           # the server's catalog, sorted by name
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


def format_address(addr: Address) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(text: str) -> Address:
    """'127.0.0.1:9999', '[::1]:9999' or 'localhost:9999' -> (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not _digits(port_text, 5) or not 0 < int(port_text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9999 or [::1]:9999)")
    return host.strip("[]"), int(port_text)


def parse_quantity(text: str) -> int:
    """The quantity rule (quantity.py): a whole number from 1 to MAX_QUANTITY, else a usage error (exit 2)."""
    try:
        return quantity_rule(text)
    except BadQuantity as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _digits(text: str, limit: int = 9) -> bool:
    """Whole number of at most ``limit`` digits: checked before int() so 5,000 digits cost nothing."""
    return text.isascii() and text.isdigit() and len(text) <= limit


def _positive_float(text: str) -> float:
    if len(text) > 32:
        raise argparse.ArgumentTypeError(f"{text[:32]!r}... is not a number of seconds")
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value


def _at_least_one(text: str) -> int:
    if not _digits(text) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text[:32]!r} must be a whole number >= 1 (at most 9 digits)")
    return int(text)


def _retries(text: str) -> int:
    if not _digits(text):
        raise argparse.ArgumentTypeError(f"--retries {text[:32]!r} must be a whole number >= 0 (at most 9 digits)")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    defaults = RetryPolicy()
    p = argparse.ArgumentParser(
        prog="udp_client.py",
        description="Get price quotes from a udp-price server over UDP, with timeouts and retransmission.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--server", type=parse_address, default=("127.0.0.1", 9999), help="server HOST:PORT (default 127.0.0.1:9999)"
    )
    p.add_argument(
        "--timeout",
        type=_positive_float,
        default=defaults.initial_timeout_s,
        help=f"first attempt's timeout in seconds (default {defaults.initial_timeout_s})",
    )
    p.add_argument(
        "--retries",
        type=_retries,
        default=defaults.max_attempts - 1,
        help=f"retransmissions after the first attempt (default {defaults.max_attempts - 1})",
    )
    p.add_argument(
        "--deadline",
        type=_positive_float,
        default=defaults.deadline_s,
        help=f"overall seconds per request, all attempts included (default {defaults.deadline_s})",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per result")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    q = sub.add_parser("quote", help="quote one item", description="Quote QUANTITY x ITEM.")
    q.add_argument("item", help="item name as in the catalog (quote names with spaces)")
    q.add_argument("quantity", type=parse_quantity, help=f"whole number, 1 to {MAX_QUANTITY}")
    sub.add_parser(
        "items",
        help="list the server's catalog",
        description="List every item the server quotes, "
        "with its unit price, sorted by name (one line each; --json: one JSON array).",
    )
    w = sub.add_parser(
        "web",
        help="serve a quote page on loopback",
        description="Serve a small web page for quotes: pick an item, enter a quantity, see the total. "
        "The page talks HTTP to this process; this process talks UDP to the quote server.",
    )
    w.add_argument(
        "--listen",
        type=parse_address,
        default=("127.0.0.1", 8080),
        help="HTTP address for the page (default 127.0.0.1:8080)",
    )
    b = sub.add_parser(
        "bulk",
        help="quote every row of a CSV file",
        description="Quote every row of ORDERS (a CSV with 'item' and 'quantity' columns; '-' for stdin). "
        "Writes one row per input row, in order, with unit_price, total, status, attempts, error added.",
        epilog=BULK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument("orders", help="orders CSV file, or - for stdin")
    b.add_argument("-o", "--output", default="-", help="where to write results (default - : stdout)")
    b.add_argument("--format", choices=["csv", "jsonl"], default="csv", help="output format (default csv)")
    b.add_argument("--window", type=_at_least_one, default=64, help="requests in flight at once (default 64)")
    b.add_argument(
        "--batch",
        type=_at_least_one,
        default=32,
        help=f"rows per request, 1 to {MAX_BATCH}; 1 sends single quote requests (default 32)",
    )
    b.add_argument(
        "--encoding",
        default="utf-8",
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


def policy_from_args(args: argparse.Namespace) -> RetryPolicy:
    base = RetryPolicy()
    return RetryPolicy(
        initial_timeout_s=args.timeout,
        max_attempts=args.retries + 1,
        deadline_s=args.deadline,
        min_timeout_s=min(base.min_timeout_s, args.timeout),
        max_timeout_s=max(base.max_timeout_s, args.timeout),
    )


def describe_status(result: QuoteResult) -> str:
    """One human line for a non-OK reply."""
    match result.status:
        case Status.UNKNOWN_ITEM:
            return f"unknown item {result.item!r}"
        case Status.BAD_QUANTITY:
            return f"bad quantity {result.quantity}: must be 1 to {MAX_QUANTITY}"
        case Status.OVERFLOW:
            return f"total for {result.quantity} x {result.item!r} is too large to quote"
        case Status.UNSUPPORTED_VERSION:
            return "the server does not speak this protocol version"
        case _:
            return f"server answered {result.status.name}"


def run_quote(args: argparse.Namespace) -> int:
    try:
        result = quote_once(args.server, args.item, args.quantity, policy_from_args(args))
    except ValueError as e:  # the request cannot be encoded, e.g. item longer than the wire field
        print(f"udp_client: {e}", file=sys.stderr)
        return EXIT_USAGE
    except NoAnswer as e:
        if args.json:
            print(
                json.dumps(
                    {
                        "item": args.item,
                        "quantity": args.quantity,
                        "unit_price": None,
                        "total": None,
                        "status": "NO_ANSWER",
                        "attempts": e.attempts,
                        "error": str(e),
                    },
                    ensure_ascii=False,
                )
            )
        print(f"udp_client: {e}", file=sys.stderr)
        return EXIT_NO_ANSWER
    if args.json:
        print(json.dumps(result.as_json(), ensure_ascii=False))
    elif result.ok:
        print(f"{result.quantity} x {result.item} @ {format_money(result.unit_price)} = {format_money(result.total)}")
    if not result.ok:
        print(f"udp_client: {describe_status(result)}", file=sys.stderr)
        return EXIT_STATUS
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "quote":
            return run_quote(args)
        if args.command == "bulk":
            return run_bulk_command(args)
        if args.command == "items":
            return run_items(args)
        if args.command == "web":
            import web

            return web.serve(args.listen, args.server, policy_from_args(args))
    except KeyboardInterrupt:
        print("udp_client: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. 'items | head': the reader has gone, so stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OUTPUT
    return EXIT_USAGE


def list_once(server: Address, policy: RetryPolicy | None = None) -> tuple[int, list[tuple[str, int]]]:
    """Blocking convenience: the server's catalog, (version, [(item, cents)])."""

    async def run() -> tuple[int, list[tuple[str, int]]]:
        async with QuoteClient(server, policy) as client:
            return await client.list_items()

    return asyncio.run(run())


def run_items(args: argparse.Namespace) -> int:
    try:
        version, entries = list_once(args.server, policy_from_args(args))
    except QuoteError as e:
        print(f"udp_client: {e}", file=sys.stderr)
        return EXIT_NO_ANSWER
    if args.json:
        print(json.dumps([{"item": i, "unit_price": format_money(p)} for i, p in entries], ensure_ascii=False))
        return EXIT_OK
    width = max((len(i) for i, _ in entries), default=0)
    for item, price in entries:
        print(f"{item:<{width}}  {format_money(price):>10}")
    print(f"udp_client: {len(entries)} items, catalog version {version}", file=sys.stderr)
    return EXIT_OK


def run_bulk_command(args: argparse.Namespace) -> int:
    import bulk_cli  # bulk builds on QuoteClient, so it imports this module: import it only when needed

    return bulk_cli.run(args)


if __name__ == "__main__":
    # Run the imported module, not __main__: bulk.py imports udp_client, and two copies of the
    # module would mean two NoAnswer classes that do not catch each other.
    import udp_client

    sys.exit(udp_client.main())
