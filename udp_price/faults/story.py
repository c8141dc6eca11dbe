"""The fault proxy's --pcap hooks and --log records: what the relay tells about each datagram.

The relay (udp_price.faults.relay) decides and sends; this records the story of each datagram in
the pcapng writer (udp_price.faults.pcap): received (with what was decided for it, or why it was
refused), sent, or not sent (a send error, or a delayed copy discarded when the proxy stopped),
each on its hop (source, destination) as a capture of the proxy's two legs shows it. A relay
without a capture has no recorder, so it pays nothing for this. ``decision_record`` is the same
story as one JSON object of the --log decision log (the relay writes it and handles write errors).
"""

from __future__ import annotations

import socket
from typing import Any, Protocol

from udp_price.address import Address
from udp_price.faults.pcap import ProxyCapture, fault_story, with_held_drops
from udp_price.faults.plan import Decision, Direction

WILDCARD = {"0.0.0.0", "::", ""}
"""Listen hosts that mean every address: the proxy's own address on a hop must then be found."""


class FlowEnds(Protocol):
    """What a recorder needs of one client's flow (the relay's _Flow)."""

    @property
    def client(self) -> Address: ...

    @property
    def sock(self) -> socket.socket: ...

    @property
    def local(self) -> Address | None: ...


class StoryRecorder:
    """Records into ``capture`` for a proxy listening at ``address`` (its bound socket's family
    ``family``) in front of the numeric ``upstream``."""

    def __init__(self, capture: ProxyCapture, address: Address, family: int, upstream: Address) -> None:
        self.capture = capture
        self.address = address
        self.family = family
        self.upstream = upstream

    def local_for(self, client: Address) -> Address | None:
        """With a wildcard listen address, the address the kernel would send to ``client`` from (a
        connected socket's name, no datagram sent): on a host where the client reached us by the
        route back to it (loopback, one address per family) it is the address the client sent to.
        Without IP_PKTINFO that is the best knowledge there is; docs/testing.md."""
        host, port = self.address
        if host not in WILDCARD:
            return None
        try:
            with socket.socket(self.family, socket.SOCK_DGRAM) as probe:
                probe.connect(client)
                return probe.getsockname()[0], port
        except OSError:
            return None

    def hop(self, direction: Direction, flow: FlowEnds, inbound: bool) -> tuple[Address, Address]:
        """(source, destination) of a datagram on one of the proxy's two legs, as a capture shows it."""
        local = flow.local or self.address
        if direction is Direction.UP:
            return (flow.client, local) if inbound else (flow.sock.getsockname()[:2], self.upstream)
        return (self.upstream, flow.sock.getsockname()[:2]) if inbound else (local, flow.client)

    def refused(self, now: float, source: Address, data: bytes, refusal: str) -> None:
        """A datagram from ``source`` that was not relayed (loop, reflector port, ...)."""
        self.capture.received(now, (source, self.address), "up", data, f"refused ({refusal})")

    def received(
        self,
        at: float,
        direction: Direction,
        flow: FlowEnds,
        label: str,
        data: bytes,
        decision: Decision,
        held: list[bool],
    ) -> str:
        """A datagram received, with what was decided for it (``held``: per copy, whether a delayed
        one found room in the hold budget); the story, which the copies sent repeat, is returned."""
        story = with_held_drops(fault_story(decision, data), held)
        self.capture.received(at, self.hop(direction, flow, True), label, data, story)
        return story

    def sent(self, now: float, direction: Direction, flow: FlowEnds, payload: bytes, note: tuple[str, str]) -> None:
        """A datagram sent; ``note`` is (label, story)."""
        self.capture.sent(now, self.hop(direction, flow, False), note[0], payload, note[1])

    def send_failed(
        self, now: float, direction: Direction, flow: FlowEnds, payload: bytes, label: str, error: OSError
    ) -> None:
        why = f"send error ({error.strerror or error})"
        self.capture.not_sent(now, self.hop(direction, flow, False), label, payload, why)

    def discarded(self, now: float, direction: Direction, flow: FlowEnds, payload: bytes, label: str) -> None:
        """A delayed copy that the proxy's stop cancelled before its time."""
        hop = self.hop(direction, flow, False)
        self.capture.not_sent(now, hop, label, payload, "discarded, the proxy stopped first")


def decision_record(
    elapsed: float, direction: Direction, flow: int, client: Address, index: int, size: int, dec: Decision
) -> dict[str, Any]:
    """One line of the --log decision log: when (seconds since start), which datagram, what was decided."""
    record: dict[str, Any] = {
        "t": round(elapsed, 6),
        "dir": direction.value,
        "flow": flow,
        "client": f"{client[0]}:{client[1]}",
        "index": index,
        "size": size,
        "action": dec.action,
    }
    if dec.action == "deliver":
        record.update(copies=dec.copies, delay_ms=round(dec.delay_s * 1000, 3), tags=list(dec.tags))
    return record
