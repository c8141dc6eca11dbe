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
import random
import secrets
import sys
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any

from catalog import format_money
from retry import Exchange, Outcome, RetryPolicy, RttEstimator
from wire_format import (
    MAX_QUANTITY,
    MalformedDatagram,
    QuoteError,
    QuoteReply,
    QuoteRequest,
    Status,
    decode_reply,
    encode_request,
    normalize_item,
)

Address = tuple[str, int]
REFUSED_LIMIT = 3
"""ICMP port-unreachable errors in a row, with no reply between, after which the server is taken as down."""
RECENT_IDS = 4096
"""Completed request ids remembered, to tell late duplicates from forgeries in the counters."""


class NoAnswer(QuoteError):
    """No matching reply arrived before the deadline or the last attempt's timeout."""

    def __init__(self, server: Address, attempts: int, elapsed_s: float, outcome: Outcome, refused: bool) -> None:
        why = {Outcome.DEADLINE: "deadline passed", Outcome.REFUSED: "nothing listens on that port"}.get(
            outcome, "all attempts timed out"
        )
        hint = " (ICMP port unreachable: is the server running?)" if refused else ""
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
        return {
            "item": self.item,
            "quantity": self.quantity,
            "unit_price": format_money(self.unit_price),
            "total": format_money(self.total),
            "status": self.status.name,
            "attempts": self.attempts,
            "request_id": f"{self.request_id:016x}",
            "latency_ms": round(self.latency_s * 1000, 3),
            "catalog_version": self.catalog_version,
        }


@dataclass
class _Pending:
    request: QuoteRequest
    exchange: Exchange
    future: asyncio.Future[QuoteReply]


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, client: QuoteClient) -> None:
        self.client = client

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.client._on_datagram(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a connected socket: the server is not there (yet). Keep retrying.
        self.client.stats["icmp_errors"] += 1
        self.client.refused += 1


class QuoteClient:
    """Async quote client over one connected UDP socket; many quotes may be in flight at once.

    The socket is connect()ed to the server, so the kernel discards datagrams from any
    other address; a reply is then accepted only if its CRC32 is valid, its request id is
    outstanding and its echoed item and quantity match the request.

        async with QuoteClient(("127.0.0.1", 9999)) as client:
            result = await client.quote("apple", 3)
    """

    def __init__(self, server: Address, policy: RetryPolicy | None = None, rng: random.Random | None = None) -> None:
        self.server = server
        self.policy = policy or RetryPolicy()
        # rng drives jitter only; request ids always come from `secrets` so they cannot be guessed.
        self.rng = rng or random.Random()
        self.rtt = RttEstimator(initial_rto_s=self.policy.initial_timeout_s)
        self.stats: Counter[str] = Counter()
        self.refused = 0
        """ICMP port-unreachable errors since the last valid reply."""
        self._pending: dict[int, _Pending] = {}
        self._recent: OrderedDict[int, None] = OrderedDict()
        self._transport: asyncio.DatagramTransport | None = None

    async def __aenter__(self) -> QuoteClient:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), remote_addr=self.server)
        self._transport = transport
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def _new_request_id(self) -> int:
        while True:
            rid = secrets.randbits(64)
            if rid not in self._pending and rid not in self._recent:
                return rid

    async def quote(self, item: str, quantity: int) -> QuoteResult:
        """Quote ``quantity`` x ``item``. Raises NoAnswer when no valid reply comes in time,
        ValueError when the request cannot be encoded (item too long, quantity out of u32)."""
        if self._transport is None:
            raise RuntimeError("use 'async with QuoteClient(...)' before quoting")
        request = QuoteRequest(self._new_request_id(), normalize_item(item), quantity)
        datagram = encode_request(request)
        loop = asyncio.get_running_loop()
        pending = _Pending(request, Exchange(self.policy, self.rtt, self.rng), loop.create_future())
        self._pending[request.request_id] = pending
        try:
            reply = await self._exchange(pending, datagram, loop)
        finally:
            del self._pending[request.request_id]
            self._remember(request.request_id)
        ex = pending.exchange
        return QuoteResult(
            item=request.item,
            quantity=request.quantity,
            status=reply.status,
            unit_price=reply.unit_price,
            total=reply.total,
            attempts=ex.attempts,
            request_id=request.request_id,
            latency_s=ex.elapsed(loop.time()),
            catalog_version=reply.catalog_version,
        )

    async def _exchange(self, p: _Pending, datagram: bytes, loop: asyncio.AbstractEventLoop) -> QuoteReply:
        ex = p.exchange
        ex.start(loop.time())
        self._send(datagram)
        while True:
            wait = ex.wake_at - loop.time()
            if wait > 0:
                done, _ = await asyncio.wait({p.future}, timeout=wait)
                if done:
                    return p.future.result()
            if self.refused >= REFUSED_LIMIT:
                # The kernel keeps telling us nothing listens there: fail now, not at the deadline.
                raise NoAnswer(self.server, ex.attempts, ex.elapsed(loop.time()), Outcome.REFUSED, True)
            if ex.on_timer(loop.time()):
                self.stats["retransmissions"] += 1
                self._send(datagram)
            elif ex.done:
                raise NoAnswer(self.server, ex.attempts, ex.elapsed(loop.time()), ex.outcome, self.refused > 0)

    def _send(self, datagram: bytes) -> None:
        assert self._transport is not None
        self.stats["sent"] += 1
        self._transport.sendto(datagram)

    def _remember(self, request_id: int) -> None:
        self._recent[request_id] = None
        if len(self._recent) > RECENT_IDS:
            self._recent.popitem(last=False)

    def _on_datagram(self, data: bytes) -> None:
        try:
            reply = decode_reply(data)
        except MalformedDatagram as e:
            self.stats[f"ignored.malformed.{e.reason}"] += 1
            return
        pending = self._pending.get(reply.request_id)
        if pending is None or pending.future.done():
            known = reply.request_id in self._recent or pending is not None
            self.stats["ignored.duplicate" if known else "ignored.unknown_id"] += 1
            return
        if not _echo_matches(pending.request, reply):
            self.stats["ignored.mismatch"] += 1
            return
        now = asyncio.get_running_loop().time()
        if reply.status is Status.BUSY:
            self.stats["busy"] += 1
            pending.exchange.on_busy(now, reply.retry_after_ms / 1000)
            return
        pending.exchange.on_answer(now)
        self.refused = 0
        self.stats["accepted"] += 1
        pending.future.set_result(reply)


def _echo_matches(request: QuoteRequest, reply: QuoteReply) -> bool:
    if reply.item == request.item and reply.quantity == request.quantity:
        return True
    # The server could not read our request, so it cannot echo it: it answers with an empty item.
    return reply.status in (Status.MALFORMED, Status.UNSUPPORTED_VERSION) and reply.item == "" and reply.quantity == 0


def quote_once(server: Address, item: str, quantity: int, policy: RetryPolicy | None = None) -> QuoteResult:
    """Blocking convenience: one quote with a fresh client."""

    async def run() -> QuoteResult:
        async with QuoteClient(server, policy) as client:
            return await client.quote(item, quantity)

    return asyncio.run(run())


# ---------------------------------------------------------------- CLI

EXIT_OK, EXIT_STATUS, EXIT_USAGE, EXIT_NO_ANSWER = 0, 1, 2, 3
EXAMPLES = f"""\
examples:
  python udp_client.py quote apple 3                   # 3 x apple @ 0.50 = 1.50
  python udp_client.py quote "café crème" 2
  python udp_client.py --json quote banana 12          # one JSON object on stdout
  python udp_client.py --server [::1]:9999 --timeout 0.1 --retries 6 --deadline 3 quote pear 1

exit codes:
  {EXIT_OK}  quoted
  {EXIT_STATUS}  the server answered with an error (unknown item, bad quantity, overflow, ...)
  {EXIT_USAGE}  bad arguments
  {EXIT_NO_ANSWER}  no valid answer within the retries / deadline (server down or network lossy)
"""


def format_address(addr: Address) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(text: str) -> Address:
    """'127.0.0.1:9999', '[::1]:9999' or 'localhost:9999' -> (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9999 or [::1]:9999)")
    return host.strip("[]"), int(port_text)


def parse_quantity(text: str) -> int:
    if not text.isdigit() or int(text) >= 2**32:
        raise argparse.ArgumentTypeError(f"quantity {text!r} must be a whole number from 1 to {MAX_QUANTITY}")
    return int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
    return value


def _retries(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"--retries {text!r} must be a whole number >= 0")
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
    except KeyboardInterrupt:
        print("udp_client: interrupted", file=sys.stderr)
        return 130
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
