"""What a quote returns: results with money in integer minor units, and the one error that means
"no answer" (every attempt failed, with the reason)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from udp_price.address import Address, format_address
from udp_price.catalog import format_money
from udp_price.client.retry import Outcome
from udp_price.errors import QuoteError
from udp_price.wire import LineResult, Status
from wire_format import MAX_QUANTITY


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
        auth_hint: str = "",
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
            f"no answer from {format_address(server)} after {attempts} attempt(s) in {elapsed_s:.2f} s: "
            f"{why}{hint}{auth_hint}"
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
