"""How hard the quote client tries (``RetryPolicy``) and why a request ended (``Outcome``).

The decisions themselves live in the pure client session (udp_price.client.session) and its
recovery state (udp_price.client.recovery); this module holds only the configuration they share with
the command line and the web page.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """How hard the client tries. All times in seconds."""

    initial_timeout_s: float = 0.25
    """RTO before any RTT has been measured (RFC 6298 says 1 s for the open Internet; this
    service is mostly on a LAN). Replaced by SRTT + 4 RTTVAR after the first reply."""
    max_attempts: int = 20
    """Transmissions of one request in all, the first included (at most 255, the transmission
    number's range). 20 cheap 76-byte attempts let a quote survive 30% loss each way (51% per
    round trip) with a failure chance of 0.51**20 ~ 1e-6 when all of them fit in the deadline (at
    LAN pace; with RTOs near max_timeout_s, 10 s holds about ten: 0.51**10 ~ 1e-3); the deadline,
    the ICMP check and the retry budget keep a dead server from costing more."""
    deadline_s: float | None = 10.0
    """One overall deadline covering every attempt of a request; None waits for max_attempts only.
    A server that answers nothing for this long while requests wait is declared unreachable."""
    min_timeout_s: float = 0.05
    """Floor for the RTO: loopback RTTs are microseconds, but scheduling hiccups are not."""
    max_timeout_s: float = 1.0
    """Ceiling for the exponential backoff of the RTO (RFC 6298 5.5; a measured RTO above it wins).
    A silent server is probed at 0.25, 0.75, 1.75 s, then every second; a request whose
    transmissions keep being lost at the end of a bulk run still gets about ten in a deadline."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_timeout_s <= 0 or self.min_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        if self.max_timeout_s < self.min_timeout_s:
            raise ValueError("max_timeout_s must be >= min_timeout_s")
        if self.deadline_s is not None and self.deadline_s <= 0:
            raise ValueError("deadline_s must be positive or None")


class Outcome(enum.Enum):
    """Why a request ended without an answer."""

    TIMED_OUT = "timed_out"  # every attempt was used up and the last one timed out
    DEADLINE = "deadline"  # the request's deadline passed first
    REFUSED = "refused"  # ICMP says nothing listens at the server's address (and nothing ever answered)
    BUDGET = "retry_budget"  # the deadline passed while the retry budget held a retransmission back
    UNREACHABLE = "unreachable"  # the server answered nothing for a whole deadline: every request fails
    VERSION = "unsupported_version"  # the server answered in another protocol version
