"""A fault-injecting UDP proxy: drop, burst-drop, duplicate, reorder, delay, corrupt, truncate, blackhole.

Sits between any UDP client and server and treats datagrams as opaque bytes.
Each client address gets its own upstream socket, so replies go back to the
right client. Every decision is a pure function of (seed, direction, flow,
per-flow index): the same seed and the same traffic give the same decisions,
and one client's traffic never shifts another's.

    udp-price-proxy --listen 127.0.0.1:9000 --upstream 127.0.0.1:9999 --drop 0.3 --seed 7

In-process (tests, your own harness):

    async with FaultProxy(FaultPlan(up=Faults(drop=0.3)), upstream=("127.0.0.1", 9999)) as proxy:
        ...send to proxy.address...
"""

from __future__ import annotations

import asyncio
import errno
import json
import resource
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import IO

from udp_price.address import Address
from udp_price.faults.guards import (
    FLOW_IDLE_S,
    MAX_HELD,
    MAX_HELD_BYTES,
    HeldBudget,
    LoopGuard,
    flow_limit,
    normalise,
)
from udp_price.faults.pcap import ProxyCapture
from udp_price.faults.plan import (
    MAX_DATAGRAM,
    MAX_FLOWS,
    ChannelState,
    Decision,
    Direction,
    FaultPlan,
    LinkState,
    decide_step,
    shape,
)
from udp_price.faults.story import WILDCARD, StoryRecorder, decision_record
from udp_price.reflectors import REFLECTOR_PORTS


@dataclass
class _Flow:
    ident: int
    client: Address
    sock: socket.socket
    local: Address | None = None
    """The proxy's address as this client sees it, for a capture (StoryRecorder.local_for)."""
    last_active: float = 0.0
    index: dict[Direction, int] = field(default_factory=lambda: {Direction.UP: 0, Direction.DOWN: 0})
    state: dict[Direction, ChannelState] = field(
        default_factory=lambda: {Direction.UP: ChannelState(), Direction.DOWN: ChannelState()}
    )


class FaultProxy:
    """The relay. ``plan`` may be replaced while running (e.g. to start a blackhole now)."""

    def __init__(
        self,
        plan: FaultPlan,
        upstream: Address,
        listen: Address = ("127.0.0.1", 0),
        log: IO[str] | None = None,
        max_flows: int = MAX_FLOWS,
        max_held: int = MAX_HELD,
        max_held_bytes: int = MAX_HELD_BYTES,
        flow_idle_s: float = FLOW_IDLE_S,
        capture: ProxyCapture | None = None,
    ) -> None:
        self.plan = plan
        self.capture = capture
        """--pcap: every datagram received and sent, with what was done to it (udp_price.faults.pcap)."""
        self._story: StoryRecorder | None = None
        """The capture's hooks (udp_price.faults.story), made at start once the addresses are known."""
        self.max_flows = flow_limit(max_flows, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        self.flow_idle_s = flow_idle_s
        self.held = HeldBudget(max_held, max_held_bytes)
        self.loop_guard = LoopGuard()
        self._upstreams: set[Address] = set()
        """Every numeric address the upstream name resolved to (at start), normalised."""
        self._fd_error_logged = False
        self._flow_count = 0
        self._own: set[Address] = set()
        """Addresses of our own sockets: a datagram from one of them is never relayed."""
        self._own_wildcard_ports: set[int] = set()
        self.upstream = upstream
        self.listen = listen
        self.log = log
        self.log_error: BaseException | None = None
        """The first decision-log write error; the log is off from then on, relaying is not."""
        self.stats: Counter[str] = Counter()
        self._flows: dict[Address, _Flow] = {}
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = 0.0
        self._timers: dict[asyncio.TimerHandle, tuple[Direction, _Flow, bytes, tuple[str, str]]] = {}
        """Delayed datagrams not sent yet: what each timer will send (a capture records the ones a stop discards)."""
        self._links = {Direction.UP: LinkState(), Direction.DOWN: LinkState()}
        """Per direction, for --rate and --limit: one queue per direction, as netem has one per interface."""

    @property
    def address(self) -> Address:
        """Where clients should send: the proxy's bound (host, port)."""
        assert self._sock is not None, "proxy not started"
        host, port = self._sock.getsockname()[:2]
        return host, port

    async def start(self) -> FaultProxy:
        self._loop = asyncio.get_running_loop()
        # Resolved once, to numbers: sources are numeric, so a name ("localhost") compared as text
        # would never match and the upstream's own datagrams would be relayed back to it.
        self.upstream = self._resolve(self.upstream)
        self._sock = _udp_socket(self.listen[0])
        self._sock.bind(self.listen)
        self._remember_own(self._sock)
        self._loop.add_reader(self._sock, self._on_client_readable)
        if self.capture is not None:
            self._story = StoryRecorder(self.capture, self.address, self._sock.family, self.upstream)
        self._started = time.monotonic()
        return self

    def _resolve(self, upstream: Address) -> Address:
        infos = socket.getaddrinfo(upstream[0], upstream[1], type=socket.SOCK_DGRAM)
        numeric = [(str(info[4][0]), int(info[4][1])) for info in infos]
        self._upstreams = {normalise(a) for a in numeric}
        return numeric[0]

    async def stop(self) -> None:
        for timer, (direction, flow, payload, note) in self._timers.items():
            timer.cancel()
            if self._story is not None and self._sock is not None:
                self._story.discarded(time.monotonic(), direction, flow, payload, note[0])
        self._timers.clear()
        self.held.count = self.held.bytes = 0
        if self._loop is None or self._sock is None:
            return
        for flow in self._flows.values():
            self._loop.remove_reader(flow.sock)
            flow.sock.close()
        self._flows.clear()
        self._own.clear()
        self._own_wildcard_ports.clear()
        self._loop.remove_reader(self._sock)
        self._sock.close()
        self._sock = None

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _flow_for(self, client: Address, now: float) -> _Flow | None:
        """The client's flow, created if needed; None if no socket can be had (counted)."""
        self._expire_idle(now)
        flow = self._flows.pop(client, None)
        if flow is None:
            assert self._loop is not None
            if len(self._flows) >= self.max_flows:
                self._close_flow(next(iter(self._flows)))
            sock = self._upstream_socket()
            if sock is None:
                return None
            self._remember_own(sock)
            local = None if self._story is None else self._story.local_for(client)
            flow = _Flow(self._flow_count, client, sock, local)
            self._flow_count += 1
            self._loop.add_reader(sock, self._on_upstream_readable, flow)
        flow.last_active = now
        self._flows[client] = flow  # (re)inserted last: the dict is in least-recently-active order
        return flow

    def _upstream_socket(self) -> socket.socket | None:
        try:
            sock = _udp_socket(self.upstream[0])
        except OSError as e:
            if e.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                raise
            self.stats["up.drop:no_fd"] += 1
            if not self._fd_error_logged:  # once: a flood would otherwise write a line per datagram
                self._fd_error_logged = True
                print(f"fault_proxy: cannot open a socket for a new flow ({e.strerror}); dropping", file=sys.stderr)
            return None
        try:
            sock.connect(self.upstream)
        except OSError:
            sock.close()
            raise
        return sock

    def _expire_idle(self, now: float) -> None:
        # The dict is in least-recently-active order: only its front can be idle.
        while self._flows:
            client, oldest = next(iter(self._flows.items()))
            if now - oldest.last_active < self.flow_idle_s:
                return
            self._close_flow(client, "flows_expired")

    def _close_flow(self, client: Address, why: str = "flows_evicted") -> None:
        flow = self._flows.pop(client)
        assert self._loop is not None
        self._loop.remove_reader(flow.sock)
        self._own.discard(normalise(flow.sock.getsockname()[:2]))
        flow.sock.close()
        self.stats[why] += 1

    def _remember_own(self, sock: socket.socket) -> None:
        host, port = normalise(sock.getsockname()[:2])
        if host in WILDCARD:
            # Bound to every address: any local address with this port is us; matching the port
            # alone may refuse a remote client that happens to use the same port, never loops.
            self._own_wildcard_ports.add(port)
        self._own.add((host, port))

    def _refusal(self, source: Address) -> str | None:
        """Why a datagram from ``source`` must not be relayed, or None.

        From the upstream itself, relaying it back upstream would let the upstream talk to itself
        through us; from one of our own sockets (a spoofed source, or --upstream pointing at the
        proxy), every relay would create the next datagram: a loop with no end. From a reflecting
        service's port (echo, chargen, DNS...; udp_price.reflectors), whatever we relay would be answered
        back to us. Compared as normalised numbers: a dual-stack socket sees ::ffff:127.0.0.1."""
        source = normalise(source)
        if source in self._upstreams:
            return "from_upstream"
        if source in self._own or (source[1] in self._own_wildcard_ports):
            return "from_self"
        if source[1] in REFLECTOR_PORTS:
            return "reflector_port"
        return None

    def _on_client_readable(self) -> None:
        assert self._sock is not None
        for _ in range(64):
            try:
                data, addr = self._sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.stats["listen_errors"] += 1
                continue
            refusal = self._refusal(addr[:2])
            now = time.monotonic()
            if refusal is None and self.loop_guard.is_loop(data, normalise(addr[:2]), now):
                refusal = "loop"  # our own datagram come back from another address: see proxy_guards
            if refusal is not None:
                self.stats[f"up.drop:{refusal}"] += 1
                if self._story is not None:
                    self._story.refused(now, addr[:2], data, refusal)
                continue
            flow = self._flow_for(addr[:2], now)
            if flow is not None:
                self._relay(Direction.UP, flow, data)

    def _on_upstream_readable(self, flow: _Flow) -> None:
        for _ in range(64):
            try:
                data = flow.sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ICMP port unreachable from a server that is down: it is a loss
                self.stats["upstream_errors"] += 1
                continue
            flow.last_active = time.monotonic()
            self._relay(Direction.DOWN, flow, data)

    def _relay(self, direction: Direction, flow: _Flow, data: bytes) -> None:
        index = flow.index[direction]
        flow.index[direction] += 1
        elapsed = time.monotonic() - self._started
        decision, flow.state[direction] = decide_step(
            self.plan, direction, flow.ident, index, data, elapsed, flow.state[direction]
        )
        decision = self._shaped(direction, decision, elapsed)
        d = direction.value
        self.stats[f"{d}.received"] += 1
        self.stats[f"{d}.{decision.action}"] += 1
        for tag in decision.tags:
            self.stats[f"{d}.{tag}"] += 1
        # Delayed copies take their room in the hold budget now, so the capture's story of the
        # received datagram says which were dropped for it (held_full) rather than "delayed".
        held = [decision.delay_s <= 0 or self._hold(direction, decision.payload) for _ in range(decision.copies)]
        label = f"{d} #{index} flow {flow.ident}"
        story = ""  # recorded first, so a capture lists each datagram before what became of it
        if self._story is not None:
            story = self._story.received(self._started + elapsed, direction, flow, label, data, decision, held)
        for copy in range(decision.copies):  # forward first: a failing decision log must never cost a datagram
            note = f"{label} copy {copy + 1} of {decision.copies}" if decision.copies > 1 else label
            if decision.delay_s <= 0:
                self._send(direction, flow, decision.payload, (note, story))
            elif held[copy]:
                self._later(decision.delay_s, direction, flow, decision.payload, (note, story))
        self._log(elapsed, direction, flow, index, len(data), decision)

    def _shaped(self, direction: Direction, decision: Decision, elapsed: float) -> Decision:
        """The decision with --rate's queueing delay added, or a tail drop when --limit is reached."""
        f = self.plan.faults(direction)
        if decision.action != "deliver" or not (f.rate_bps or f.limit):
            return decision
        delay: float | None = decision.delay_s
        link = self._links[direction]
        for _ in range(decision.copies):
            delay, link = shape(link, elapsed, len(decision.payload), decision.delay_s, f.rate_bps, f.limit)
            if delay is None:
                break
        self._links[direction] = link
        if delay is None:
            return Decision("drop:limit")
        return replace(decision, delay_s=delay)

    def _hold(self, direction: Direction, payload: bytes) -> bool:
        """Room in the hold budget for one delayed copy, or a tail drop (counted) when it is full."""
        if self.held.take(len(payload)):
            return True
        self.stats[f"{direction.value}.drop:held_full"] += 1
        return False

    def _later(self, delay: float, direction: Direction, flow: _Flow, payload: bytes, note: tuple[str, str]) -> None:
        """Send ``payload`` (already counted in the hold budget) after ``delay`` seconds."""
        assert self._loop is not None

        def fire() -> None:
            self._timers.pop(handle, None)
            self.held.give_back(len(payload))
            if self._sock is not None:
                self._send(direction, flow, payload, note)

        handle = self._loop.call_later(delay, fire)
        self._timers[handle] = (direction, flow, payload, note)

    def _send(self, direction: Direction, flow: _Flow, payload: bytes, note: tuple[str, str]) -> None:
        """Send ``payload`` on; ``note`` (label, fault story) is what a --pcap capture says about it."""
        assert self._sock is not None
        now = time.monotonic()  # before sending: the receiver may read it before we run again
        try:
            if direction is Direction.UP:
                flow.sock.send(payload)
            else:
                self._sock.sendto(payload, flow.client)
                self.loop_guard.sent_down(payload, time.monotonic())
        except OSError as e:
            self.stats[f"{direction.value}.send_errors"] += 1
            if self._story is not None:
                self._story.send_failed(now, direction, flow, payload, note[0], e)
            return
        self.stats[f"{direction.value}.sent"] += 1
        if self._story is not None:
            self._story.sent(now, direction, flow, payload, note)

    def _log(self, elapsed: float, direction: Direction, flow: _Flow, index: int, size: int, dec: Decision) -> None:
        if self.log is None:
            return
        record = decision_record(elapsed, direction, flow.ident, flow.client, index, size, dec)
        try:
            self.log.write(json.dumps(record) + "\n")
        except (OSError, ValueError) as e:  # reader gone (| head), disk full, closed file
            self._log_failed(e)

    def _log_failed(self, e: BaseException) -> None:
        """Stop logging after the first write error, say so once, and keep relaying."""
        self.log = None
        self.log_error = e
        self.stats["log_errors"] += 1
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        print(f"fault_proxy: decision log stopped ({why}); still relaying", file=sys.stderr, flush=True)

    def close_log(self) -> None:
        """Flush what the log buffered; a failure here is counted like one while running."""
        if self.log is None:
            return
        try:
            self.log.flush()
        except (OSError, ValueError) as e:
            self._log_failed(e)

    def summary(self) -> str:
        return " ".join(f"{k}={v}" for k, v in sorted(self.stats.items()))


def _udp_socket(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    return sock
