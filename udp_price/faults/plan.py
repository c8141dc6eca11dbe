"""The fault proxy's pure plan: which faults, with which probabilities, and the decision for one
datagram as a pure function of (seed, direction, flow, per-flow index). No sockets, no clock: the
relay (``udp_price.faults.relay``) passes the time in."""

from __future__ import annotations

import hashlib
import math
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
    drop_correlation: float = 0.0
    """netem's loss correlation: each drop draw is correlation * previous + (1 - correlation) * new."""
    gemodel: tuple[float, float, float, float] | None = None
    """netem's ``gemodel p r 1-h 1-k``: P(good->bad), P(bad->good), loss in the bad state, loss in
    the good state. Replaces burst_loss/burst_len (which is gemodel with 1-h = 1, 1-k = 0)."""
    reorder_gap: int = 0
    """netem's ``reorder P gap N``: 0 keeps the plain model (hold with probability reorder for
    reorder_delay_s); N > 0: every datagram is delayed by delay_s except that, once N - 1 have gone
    since the last reordered one, the next is sent at once with probability reorder."""
    rate_bps: float = 0.0
    """Bandwidth limit in bits per second, 0 = unlimited (netem ``rate``, Toxiproxy ``bandwidth``)."""
    limit: int = 0
    """Datagrams held (delayed or queued by rate) at once per direction before tail drop; 0 = only the
    proxy's memory bound (netem ``limit``)."""

    def __post_init__(self) -> None:
        self._check_finite()
        if self.gemodel is not None and not all(0.0 <= v <= 1.0 for v in self.gemodel):
            raise ValueError(f"gemodel={self.gemodel} holds values that are not probabilities in [0, 1]")
        if self.gemodel is not None and self.burst_loss > 0:
            raise ValueError("gemodel and burst_loss are two settings of one channel; give one")
        if self.rate_bps < 0 or self.limit < 0 or self.reorder_gap < 0:
            raise ValueError("rate, limit and reorder gap must be >= 0")
        for name in ("drop", "burst_loss", "duplicate", "reorder", "corrupt", "truncate", "drop_correlation"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value} is not a probability in [0, 1]")
        if self.burst_loss >= 1.0:
            raise ValueError("burst_loss must be below 1")
        if self.burst_len < 1.0:
            raise ValueError("burst_len is a mean number of datagrams, at least 1")
        if min(self.delay_s, self.jitter_s, self.reorder_delay_s) < 0:
            raise ValueError("delays must be >= 0")

    def _check_finite(self) -> None:
        """nan passes every comparison above unnoticed (and is not JSON), inf overflows timers."""
        numbers = [
            self.drop, self.drop_correlation, self.burst_loss, self.burst_len, self.duplicate, self.reorder,
            self.reorder_delay_s, self.delay_s, self.jitter_s, self.corrupt, self.truncate, self.rate_bps,
            *(self.gemodel or ()),
        ]  # fmt: skip
        numbers += [v for window in self.blackhole for v in window if v is not None]
        if not all(math.isfinite(v) for v in numbers):
            raise ValueError("fault values must be finite numbers (not nan or inf)")


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


@dataclass(frozen=True)
class ChannelState:
    """What one flow's direction remembers between datagrams: the Gilbert-Elliott state, the last
    drop draw (for loss correlation) and datagrams since the last reordered one (for the gap)."""

    bad: bool = False
    last_drop_u: float = 0.0
    since_reorder: int = 0


def decide(
    plan: FaultPlan, direction: Direction, flow: int, index: int, data: bytes, elapsed_s: float, bad: bool
) -> tuple[Decision, bool]:
    """``decide_step`` for callers that keep only the Gilbert-Elliott state (no correlation, no gap)."""
    decision, state = decide_step(plan, direction, flow, index, data, elapsed_s, ChannelState(bad=bad))
    return decision, state.bad


def decide_step(
    plan: FaultPlan,
    direction: Direction,
    flow: int,
    index: int,
    data: bytes,
    elapsed_s: float,
    state: ChannelState,
) -> tuple[Decision, ChannelState]:
    """The fate of one datagram, and the flow's next channel state. Pure and reproducible.

    Every random number is drawn, in a fixed order, whether or not its fault is enabled,
    so turning one fault on does not reshuffle the decisions of the others (draws added later
    come after the first seven, so old seeds keep their old decisions).
    """
    f = plan.faults(direction)
    rng = _rng_for(plan.seed, direction, flow, index)
    u_state, u_drop, u_dup, u_reorder, u_jitter, u_corrupt, u_trunc, u_ge_loss = (rng.random() for _ in range(8))
    u_drop = f.drop_correlation * state.last_drop_u + (1.0 - f.drop_correlation) * u_drop
    if f.gemodel is not None:
        bad, ge_lost = gemodel_step(state.bad, u_state, u_ge_loss, f.gemodel)
    else:
        bad = gilbert_step(state.bad, u_state, f.burst_loss, f.burst_len)
        ge_lost = bad
    after = ChannelState(bad, u_drop, state.since_reorder)
    if any(start <= elapsed_s and (end is None or elapsed_s < end) for start, end in f.blackhole):
        return Decision("drop:blackhole"), after
    if index in f.drop_indices:
        return Decision("drop:scripted"), after
    if ge_lost:
        return Decision("drop:burst"), after
    if u_drop < f.drop:
        return Decision("drop:random"), after
    tags: list[str] = []
    payload = data
    if u_corrupt < f.corrupt and payload:
        payload = flip_bits(payload, rng)
        tags.append("corrupt")
    if u_trunc < f.truncate and payload:
        payload = payload[: rng.randrange(len(payload))]
        tags.append("truncate")
    delay = f.delay_s + u_jitter * f.jitter_s
    if f.reorder_gap > 0:
        # netem: a datagram becomes eligible once gap - 1 have gone since the last reordered one;
        # an eligible one sent at once (no delay) overtakes those still delayed.
        if after.since_reorder >= f.reorder_gap - 1 and u_reorder < f.reorder:
            delay = 0.0
            tags.append("reorder")
            after = ChannelState(bad, u_drop, 0)
        else:
            after = ChannelState(bad, u_drop, after.since_reorder + 1)
    elif u_reorder < f.reorder:
        delay += f.reorder_delay_s
        tags.append("reorder")
    copies = MAX_COPIES if u_dup < f.duplicate else 1
    if copies > 1:
        tags.append("duplicate")
    return Decision("deliver", copies, delay, payload, tuple(tags)), after


def gemodel_step(
    bad: bool, u_move: float, u_loss: float, model: tuple[float, float, float, float]
) -> tuple[bool, bool]:
    """netem's 4-parameter Gilbert-Elliott step: (next state, lost?). As in the kernel
    (loss_gilb_ell), the state may move first, and the loss is judged by the state it was in."""
    p, r, bad_loss, good_loss = model
    if bad:
        return (u_move >= r), u_loss < bad_loss
    return (u_move < p), u_loss < good_loss


@dataclass(frozen=True)
class LinkState:
    """One direction's link, for rate and limit: when the last queued datagram leaves, and when
    each held one leaves (elapsed seconds, ascending)."""

    free_at: float = 0.0
    departures: tuple[float, ...] = ()


def shape(
    link: LinkState, now: float, size: int, delay_s: float, rate_bps: float, limit: int
) -> tuple[float | None, LinkState]:
    """The delay to apply to a datagram of ``size`` bytes decided at ``now`` (elapsed seconds), or None
    for a tail drop (``limit`` datagrams already held), and the link's next state. With a rate, a
    datagram leaves no earlier than the previous one has finished plus its own transmission time
    (size * 8 / rate), as netem's rate does."""
    held = tuple(t for t in link.departures if t > now)
    if limit and len(held) >= limit:
        return None, LinkState(link.free_at, held)
    leave = now + delay_s
    if rate_bps > 0:
        leave = max(leave, link.free_at) + size * 8 / rate_bps
    free_at = leave if rate_bps > 0 else link.free_at
    if leave <= now:
        return 0.0, LinkState(free_at, held)
    return leave - now, LinkState(free_at, tuple(sorted((*held, leave))))


def flip_bits(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        bit = rng.randrange(len(out) * 8)
        out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)
