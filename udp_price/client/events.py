"""What the client session hands back, and what it keeps per request.

``Answered`` and ``Failed`` are the events ``udp_price.client.session.ClientSession`` returns
(one per request, when it ends); ``Pending`` is its record of a request still waiting. Plain
data: every decision about them is the session's.
"""

from __future__ import annotations

from dataclasses import dataclass

from udp_price.client.loss_detection import Transmissions
from udp_price.client.retry import Outcome
from udp_price.wire import Reply, Request, Status


@dataclass(frozen=True, slots=True)
class Answered:
    """A request answered: the reply that passed every check, and what it took."""

    request_id: int
    reply: Reply
    attempts: int
    latency_s: float


@dataclass(frozen=True, slots=True)
class Failed:
    """A request given up on, and why (``outcome``)."""

    request_id: int
    outcome: Outcome
    attempts: int
    elapsed_s: float
    refused: bool
    """ICMP port-unreachable errors were seen since the last reply."""
    status: Status | None = None
    """The error status the server kept answering (MALFORMED, UNSUPPORTED_VERSION), if any."""


Event = Answered | Failed


@dataclass(slots=True, kw_only=True)
class Pending(Transmissions):
    """What the session keeps of one request until it is answered or fails."""

    request: Request
    datagram: bytes
    """The request encoded once, as transmission 0; each datagram sent renumbers a copy."""
    digest: int
    started_at: float
    deadline: float
    not_before: float = 0.0
    error_status: Status | None = None
