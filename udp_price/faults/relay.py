"""A fault-injecting UDP proxy: drop, burst-drop, duplicate, reorder, delay, corrupt, truncate, blackhole.

Sits between any UDP client and server and treats datagrams as opaque bytes.
Each client address gets its own upstream socket, so replies go back to the
right client. Every decision is a pure function of (seed, direction, flow,
per-flow index): the same seed and the same traffic give the same decisions,
and one client's traffic never shifts another's.

    python fault_proxy.py --listen 127.0.0.1:9000 --upstream 127.0.0.1:9999 --drop 0.3 --seed 7

In-process (tests, your own harness):

    async with FaultProxy(FaultPlan(up=Faults(drop=0.3)), upstream=("127.0.0.1", 9999)) as proxy:
        ...send to proxy.address...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import hashlib
import json
import random
import resource
import signal
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import IO, Any

from proxy_guards import FLOW_IDLE_S, MAX_HELD, MAX_HELD_BYTES, HeldBudget, LoopGuard, flow_limit, normalise
from reflectors import REFLECTOR_PORTS

Address = tuple[str, int]
MAX_DATAGRAM = 65535
MAX_COPIES = 2
"""At most this many datagrams leave per datagram received (duplication is the only fault that adds
any), and none is larger than what came in: the proxy amplifies by at most 2x, by design."""
MAX_FLOWS = 1024
"""Client addresses with an upstream socket at once (fewer if the fd limit is lower, see
proxy_guards.flow_limit); the least recently active is closed first, and flows idle for FLOW_IDLE_S
are closed, so a flood of (spoofed) source addresses costs bounded memory and file descriptors."""
_WILDCARD = {"0.0.0.0", "::", ""}


class Direction(StrEnum):
    UP = "up"  # client -> server
    DOWN = "down"  # server -> client


@dataclass(frozen=True)
class Faults:
    """Faults for one direction. Probabilities are per datagram, in [0, 1]; times in seconds."""

    drop: float = 0.0
    """Independent (Bernoulli) loss."""
    burst_loss: float = 0.0
    """Long-run loss rate of a Gilbert-Elliott channel (every datagram lost while in the bad state)."""
    burst_len: float = 1.0
    """Mean length of a loss burst, in datagrams, for burst_loss."""
    duplicate: float = 0.0
    """Deliver a second copy."""
    reorder: float = 0.0
    """Hold the datagram for reorder_delay_s so later ones overtake it (late delivery)."""
    reorder_delay_s: float = 0.1
    delay_s: float = 0.0
    """Fixed delay added to every delivered datagram."""
    jitter_s: float = 0.0
    """Extra delay drawn uniformly from [0, jitter_s]."""
    corrupt: float = 0.0
    """Flip 1 to 3 random bits."""
    truncate: float = 0.0
    """Cut the datagram to a random shorter length."""
    blackhole: tuple[tuple[float, float | None], ...] = ()
    """Windows (start, end) in seconds since the proxy started where everything is lost; end None = forever."""
    drop_indices: frozenset[int] = frozenset()
    """Scripted drops: 0-based datagram indices within each flow."""

    def __post_init__(self) -> None:
        for name in ("drop", "burst_loss", "duplicate", "reorder", "corrupt", "truncate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value} is not a probability in [0, 1]")
        if self.burst_loss >= 1.0:
            raise ValueError("burst_loss must be below 1")
        if self.burst_len < 1.0:
            raise ValueError("burst_len is a mean number of datagrams, at least 1")
        if min(self.delay_s, self.jitter_s, self.reorder_delay_s) < 0:
            raise ValueError("delays must be >= 0")


@dataclass(frozen=True)
class FaultPlan:
    """What the proxy does to each direction, and the seed every decision derives from."""

    up: Faults = field(default_factory=Faults)
    down: Faults = field(default_factory=Faults)
    seed: int = 0

    @classmethod
    def both(cls, seed: int = 0, **faults: Any) -> FaultPlan:
        """The same faults in both directions: ``FaultPlan.both(drop=0.3)``."""
        f = Faults(**faults)
        return cls(up=f, down=f, seed=seed)

    def faults(self, direction: Direction) -> Faults:
        return self.up if direction is Direction.UP else self.down


@dataclass(frozen=True)
class Decision:
    """What happens to one datagram. ``action`` is 'drop:<why>' (no copies) or 'deliver'."""

    action: str
    copies: int = 0
    delay_s: float = 0.0
    payload: bytes = b""
    tags: tuple[str, ...] = ()


def _rng_for(seed: int, direction: Direction, flow: int, index: int) -> random.Random:
    key = f"{seed}/{direction.value}/{flow}/{index}".encode()
    return random.Random(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big"))


def gilbert_step(bad: bool, u: float, loss: float, burst_len: float) -> bool:
    """Next state of a two-state Gilbert-Elliott channel whose stationary P(bad) is ``loss``."""
    if loss <= 0:
        return False
    leave_bad = 1.0 / burst_len
    enter_bad = min(1.0, loss * leave_bad / (1.0 - loss))
    return u >= leave_bad if bad else u < enter_bad


def decide(
    plan: FaultPlan, direction: Direction, flow: int, index: int, data: bytes, elapsed_s: float, bad: bool
) -> tuple[Decision, bool]:
    """The fate of one datagram, and the flow's next Gilbert-Elliott state. Pure and reproducible.

    Every random number is drawn, in a fixed order, whether or not its fault is enabled,
    so turning one fault on does not reshuffle the decisions of the others.
    """
    f = plan.faults(direction)
    rng = _rng_for(plan.seed, direction, flow, index)
    u_state, u_drop, u_dup, u_reorder, u_jitter, u_corrupt, u_trunc = (rng.random() for _ in range(7))
    bad = gilbert_step(bad, u_state, f.burst_loss, f.burst_len)
    if any(start <= elapsed_s and (end is None or elapsed_s < end) for start, end in f.blackhole):
        return Decision("drop:blackhole"), bad
    if index in f.drop_indices:
        return Decision("drop:scripted"), bad
    if bad:
        return Decision("drop:burst"), bad
    if u_drop < f.drop:
        return Decision("drop:random"), bad
    tags: list[str] = []
    payload = data
    if u_corrupt < f.corrupt and payload:
        payload = _flip_bits(payload, rng)
        tags.append("corrupt")
    if u_trunc < f.truncate and payload:
        payload = payload[: rng.randrange(len(payload))]
        tags.append("truncate")
    delay = f.delay_s + u_jitter * f.jitter_s
    if u_reorder < f.reorder:
        delay += f.reorder_delay_s
        tags.append("reorder")
    copies = MAX_COPIES if u_dup < f.duplicate else 1
    if copies > 1:
        tags.append("duplicate")
    return Decision("deliver", copies, delay, payload, tuple(tags)), bad


def _flip_bits(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        bit = rng.randrange(len(out) * 8)
        out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


# ---------------------------------------------------------------- asyncio relay


@dataclass
class _Flow:
    ident: int
    client: Address
    sock: socket.socket
    last_active: float = 0.0
    index: dict[Direction, int] = field(default_factory=lambda: {Direction.UP: 0, Direction.DOWN: 0})
    bad: dict[Direction, bool] = field(default_factory=lambda: {Direction.UP: False, Direction.DOWN: False})


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
    ) -> None:
        self.plan = plan
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
        self.stats: Counter[str] = Counter()
        self._flows: dict[Address, _Flow] = {}
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = 0.0
        self._timers: set[asyncio.TimerHandle] = set()

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
        self._started = time.monotonic()
        return self

    def _resolve(self, upstream: Address) -> Address:
        infos = socket.getaddrinfo(upstream[0], upstream[1], type=socket.SOCK_DGRAM)
        numeric = [(str(info[4][0]), int(info[4][1])) for info in infos]
        self._upstreams = {normalise(a) for a in numeric}
        return numeric[0]

    async def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
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
            flow = _Flow(self._flow_count, client, sock)
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
        if host in _WILDCARD:
            # Bound to every address: any local address with this port is us; matching the port
            # alone may refuse a remote client that happens to use the same port, never loops.
            self._own_wildcard_ports.add(port)
        self._own.add((host, port))

    def _refusal(self, source: Address) -> str | None:
        """Why a datagram from ``source`` must not be relayed, or None.

        From the upstream itself, relaying it back upstream would let the upstream talk to itself
        through us; from one of our own sockets (a spoofed source, or --upstream pointing at the
        proxy), every relay would create the next datagram: a loop with no end. From a reflecting
        service's port (echo, chargen, DNS...; reflectors.py), whatever we relay would be answered
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
        decision, flow.bad[direction] = decide(
            self.plan, direction, flow.ident, index, data, elapsed, flow.bad[direction]
        )
        d = direction.value
        self.stats[f"{d}.received"] += 1
        self.stats[f"{d}.{decision.action}"] += 1
        for tag in decision.tags:
            self.stats[f"{d}.{tag}"] += 1
        self._log(elapsed, direction, flow, index, len(data), decision)
        for _ in range(decision.copies):
            if decision.delay_s > 0:
                self._later(decision.delay_s, direction, flow, decision.payload)
            else:
                self._send(direction, flow, decision.payload)

    def _later(self, delay: float, direction: Direction, flow: _Flow, payload: bytes) -> None:
        assert self._loop is not None
        if not self.held.take(len(payload)):
            self.stats[f"{direction.value}.drop:held_full"] += 1
            return

        def fire() -> None:
            self._timers.discard(handle)
            self.held.give_back(len(payload))
            if self._sock is not None:
                self._send(direction, flow, payload)

        handle = self._loop.call_later(delay, fire)
        self._timers.add(handle)

    def _send(self, direction: Direction, flow: _Flow, payload: bytes) -> None:
        assert self._sock is not None
        try:
            if direction is Direction.UP:
                flow.sock.send(payload)
            else:
                self._sock.sendto(payload, flow.client)
                self.loop_guard.sent_down(payload, time.monotonic())
        except OSError:
            self.stats[f"{direction.value}.send_errors"] += 1
            return
        self.stats[f"{direction.value}.sent"] += 1

    def _log(self, elapsed: float, direction: Direction, flow: _Flow, index: int, size: int, dec: Decision) -> None:
        if self.log is None:
            return
        record: dict[str, Any] = {
            "t": round(elapsed, 6),
            "dir": direction.value,
            "flow": flow.ident,
            "client": f"{flow.client[0]}:{flow.client[1]}",
            "index": index,
            "size": size,
            "action": dec.action,
        }
        if dec.action == "deliver":
            record.update(copies=dec.copies, delay_ms=round(dec.delay_s * 1000, 3), tags=list(dec.tags))
        self.log.write(json.dumps(record) + "\n")

    def summary(self) -> str:
        return " ".join(f"{k}={v}" for k, v in sorted(self.stats.items()))


def _udp_socket(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    return sock


# ---------------------------------------------------------------- CLI

EXAMPLES = """\
examples:
  # 30% loss each way in front of a server on 9999; clients talk to 9000
  python fault_proxy.py --listen 127.0.0.1:9000 --upstream 127.0.0.1:9999 --drop 0.3 --seed 7
  # bursty loss up, duplicates down, every decision logged
  python fault_proxy.py --upstream 127.0.0.1:9999 --burst-loss-up 0.3 --burst-len 3 --duplicate-down 0.2 \\
      --log decisions.jsonl
  # lose the first two datagrams of every flow, and everything from 5 s to 7 s after start
  python fault_proxy.py --upstream 127.0.0.1:9999 --drop-index-up 0,1 --blackhole 5:7

Each fault flag X also exists as X-up (client -> server) and X-down (server -> client).
Stop with Ctrl-C or SIGTERM: the counters are printed on exit.
"""

_FLAG_HELP = {
    "drop": "probability of independent loss",
    "burst_loss": "long-run loss rate of Gilbert-Elliott burst loss",
    "burst_len": "mean burst length in datagrams (with --burst-loss)",
    "duplicate": "probability of delivering a second copy",
    "reorder": "probability of holding a datagram back so later ones overtake it",
    "reorder_delay_s": "seconds a reordered datagram is held (default 0.1)",
    "delay_s": "seconds of delay added to every datagram",
    "jitter_s": "extra random delay, uniform in [0, S] seconds",
    "corrupt": "probability of flipping 1-3 bits",
    "truncate": "probability of cutting the datagram short",
}
_FLAG_NAME = {"reorder_delay_s": "reorder-delay", "delay_s": "delay", "jitter_s": "jitter"}


def parse_address(text: str) -> Address:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9000 or [::1]:9000)")
    return host.strip("[]"), int(port)


def parse_windows(text: str) -> tuple[tuple[float, float | None], ...]:
    """'2:4,10:' -> ((2.0, 4.0), (10.0, None)); ':' alone or '0:' means forever from the start."""
    windows: list[tuple[float, float | None]] = []
    for part in text.split(","):
        start, sep, end = part.partition(":")
        try:
            s = float(start or 0)
            e = float(end) if end else None
        except ValueError:
            raise argparse.ArgumentTypeError(f"blackhole window {part!r} is not START:END seconds") from None
        if not sep or s < 0 or (e is not None and e <= s):
            raise argparse.ArgumentTypeError(f"blackhole window {part!r} is not START:END with END > START >= 0")
        windows.append((s, e))
    return tuple(windows)


def parse_indices(text: str) -> frozenset[int]:
    try:
        values = frozenset(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of indices") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError("indices are 0-based and >= 0")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fault_proxy.py",
        description="UDP proxy that drops, duplicates, reorders, delays and corrupts datagrams, reproducibly.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--listen", type=parse_address, default=("127.0.0.1", 9000), help="address for clients")
    p.add_argument("--upstream", type=parse_address, required=True, help="the real server HOST:PORT")
    p.add_argument("--seed", type=int, default=None, help="seed for every decision (default: random, printed)")
    p.add_argument("--log", help="write one JSON line per datagram to this file ('-' for stdout)")
    p.add_argument("--duration", type=float, default=None, help="stop by itself after this many seconds")
    for name, text in _FLAG_HELP.items():
        flag = _FLAG_NAME.get(name, name.replace("_", "-"))
        p.add_argument(f"--{flag}", type=float, dest=name, metavar="X", help=f"{text}, both directions")
        for d in ("up", "down"):
            p.add_argument(f"--{flag}-{d}", type=float, dest=f"{name}_{d}", metavar="X", help=argparse.SUPPRESS)
    for d in ("", "-up", "-down"):
        p.add_argument(
            f"--blackhole{d}",
            type=parse_windows,
            dest=f"blackhole{d.replace('-', '_')}",
            metavar="S:E",
            help="lose everything in these windows, seconds since start" if not d else argparse.SUPPRESS,
        )
        p.add_argument(
            f"--drop-index{d}",
            type=parse_indices,
            dest=f"drop_indices{d.replace('-', '_')}",
            metavar="I,J",
            help="drop these 0-based datagram indices of every flow" if not d else argparse.SUPPRESS,
        )
    return p


def plan_from_args(args: argparse.Namespace, seed: int) -> FaultPlan:
    def faults(direction: str) -> Faults:
        values: dict[str, Any] = {}
        for f in fields(Faults):
            specific = getattr(args, f"{f.name}_{direction}", None)
            both = getattr(args, f.name, None)
            chosen = specific if specific is not None else both
            if chosen is not None:
                values[f.name] = chosen
        return Faults(**values)

    return FaultPlan(up=faults("up"), down=faults("down"), seed=seed)


async def _run(proxy: FaultProxy, duration: float | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with proxy:
        print(f"fault_proxy: {_fmt(proxy.address)} -> {_fmt(proxy.upstream)}, seed {proxy.plan.seed}", flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), duration)


def _fmt(addr: Address) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    try:
        plan = plan_from_args(args, seed)
    except ValueError as e:
        parser.error(str(e))
    with contextlib.ExitStack() as stack:
        log: IO[str] | None = None
        try:
            if args.log == "-":
                log = sys.stdout
            elif args.log:
                log = stack.enter_context(open(args.log, "w", encoding="utf-8"))
        except OSError as e:
            print(f"fault_proxy: cannot open log {args.log}: {e.strerror}", file=sys.stderr)
            return 2
        proxy = FaultProxy(plan, upstream=args.upstream, listen=args.listen, log=log)
        try:
            asyncio.run(_run(proxy, args.duration))
        except socket.gaierror as e:
            print(f"fault_proxy: cannot resolve upstream {args.upstream[0]}: {e.strerror or e}", file=sys.stderr)
            return 2
        except OSError as e:
            print(f"fault_proxy: cannot listen on {_fmt(args.listen)}: {e.strerror or e}", file=sys.stderr)
            return 5
    print(f"fault_proxy: stopped; seed={seed} {proxy.summary()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
