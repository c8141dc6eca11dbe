"""The fault proxy's pure plan: which faults, with which probabilities, and the decision for one
datagram as a pure function of (seed, direction, flow, per-flow index). No sockets, no clock: the
relay (``udp_price.faults.relay``) passes the time in."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

MAX_DATAGRAM = 65535
MAX_COPIES = 2
"""At most this many datagrams leave per datagram received (duplication is the only fault that adds
any), and none is larger than what came in: the proxy amplifies by at most 2x, by design."""
MAX_FLOWS = 1024
"""Client addresses with an upstream socket at once (fewer if the fd limit is lower, see
udp_price.faults.guards.flow_limit); the least recently active is closed first, and flows idle for FLOW_IDLE_S
are closed, so a flood of (spoofed) source addresses costs bounded memory and file descriptors."""


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
        payload = flip_bits(payload, rng)
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


def flip_bits(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        bit = rng.randrange(len(out) * 8)
        out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)
