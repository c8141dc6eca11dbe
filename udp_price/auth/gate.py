"""The two gates: the server's (verify a request before anything else, sign its reply) and the
client's (sign each transmission, accept only replies signed under its own key).

Pure: wall time comes in as ``wall_s`` (Unix seconds), from the shell."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from udp_price.auth.keys import Key
from udp_price.auth.replay import ReplayWindow
from udp_price.auth.trailer import is_signed, sign, verify
from wire_format import AUTH_WINDOW_S


def _ms(wall_s: float) -> int:
    return int(wall_s * 1000)


@dataclass
class ServerAuth:
    """The server's keys and replay window. ``keys`` may hold several keys at once (a rotation);
    ``set_keys`` swaps them in one assignment (a reload). ``wall_offset_s`` turns the serving loop's
    monotonic ``now`` into Unix time (the shell, udp_price.server.keyring, sets it at start, at
    every reload and every minute). The shell also sets ``replay.not_before_ms`` to the start time:
    a request signed before this process started is refused ("before_start")."""

    keys: Mapping[int, Key]
    allow_anonymous: bool = False
    wall_offset_s: float = 0.0
    replay: ReplayWindow = field(default_factory=ReplayWindow)

    def set_keys(self, keys: Mapping[int, Key]) -> None:
        self.keys = dict(keys)

    def admit(self, data: bytes, now: float) -> tuple[bytes, Key] | str:
        """(the plain request, the key to sign its reply with) of an authenticated datagram, or
        the reason it is dropped (a counter name): its tag, then its time and freshness. Nothing
        about it is answered before this. A plain tuple, not a named one: this runs per datagram."""
        verified = verify(data, self.keys)
        if isinstance(verified, str):
            return verified
        inner, key, timestamp_ms, fingerprint = verified
        stale = self.replay.check(key.key_id, fingerprint, timestamp_ms, int((now + self.wall_offset_s) * 1000))
        if stale is not None:
            return stale
        return inner, key

    def sign_reply(self, reply: bytes, key: Key, now: float) -> bytes:
        """The reply, signed with the key its request was signed with."""
        return sign(reply, key, _ms(now + self.wall_offset_s))


@dataclass
class ClientAuth:
    """One client key. Each transmission is signed with the wall clock as it is, never pushed
    ahead of it (a busy client would run ahead until the server refused it as too new): two
    transmissions differ in their request id or transmission number, so their tags differ, and
    the server's replay window tells them apart by tag, not by timestamp."""

    key: Key
    window_ms: int = AUTH_WINDOW_S * 1000

    _keys: dict[int, Key] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.key, Key):  # a secret, a path or an id given by mistake
            raise TypeError(
                "key must be a udp_price.auth.Key (Key(key_id, secret) or read_client_key(path)), "
                f"not {type(self.key).__name__}"
            )
        self._keys = {self.key.key_id: self.key}

    def sign(self, datagram: bytes, wall_s: float) -> bytes:
        return sign(datagram, self.key, _ms(wall_s))

    def open(self, data: bytes, wall_s: float) -> bytes | str:
        """The plain reply inside ``data`` if it is signed under our key within the time window,
        else why not (a counter name). An unsigned reply is never believed: no silent downgrade."""
        if not is_signed(data):
            return "unsigned"
        verified = verify(data, self._keys)
        if isinstance(verified, str):
            return verified
        inner, _, timestamp_ms, _ = verified
        if abs(timestamp_ms - _ms(wall_s)) > self.window_ms:
            return "out_of_window"
        return inner
