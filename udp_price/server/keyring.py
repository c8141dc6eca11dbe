"""The server's keys file in operation: read at start, reloaded with the catalog (SIGHUP, and with
--watch whenever the file changes), and the wall clock the replay window needs.

A reload that finds a bad file (unreadable, too open, a bad line) keeps the keys in use and logs
why, as a bad catalog is refused: a typo during a rotation must not lock every client out.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Protocol

from udp_price.auth import ServerAuth, read_keys_file
from udp_price.errors import KeyFileError

log = logging.getLogger("udp_price.server")

CLOCK_REFRESH_S = 60.0
"""How often the Unix-time offset of the monotonic serving clock is taken again (an NTP step of
the wall clock then reaches the replay window within a minute)."""


class _Duties(Protocol):
    def reload(self) -> None: ...

    def swap_in_ready(self) -> None: ...

    def tick(self, now: float) -> float | None: ...

    def close(self) -> None: ...


def wall_offset_s() -> float:
    """Unix time minus the serving loop's monotonic clock: ``now + offset`` is Unix seconds."""
    return time.time() - time.monotonic()


def _stat_key(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode


@dataclass
class KeyReloads:
    """Wraps the catalog's duties: each reload also reloads the keys file; ``tick`` keeps the
    wall-clock offset fresh and, with ``watch_interval_s``, reloads the keys when the file changes."""

    inner: _Duties
    auth: ServerAuth
    path: str
    watch_interval_s: float | None = None
    _seen: tuple[int, int, int, int] | None = None

    def __post_init__(self) -> None:
        self._seen = _stat_key(self.path)
        self.auth.wall_offset_s = wall_offset_s()

    def reload(self) -> None:
        self.reload_keys()
        self.inner.reload()

    def reload_keys(self) -> None:
        self.auth.wall_offset_s = wall_offset_s()
        self._seen = _stat_key(self.path)
        try:
            keys = read_keys_file(self.path)
        except KeyFileError as e:
            log.error(
                "keys reload rejected, still using %d key(s): %s",
                len(self.auth.keys),
                e,
                extra={"event": "keys_rejected"},
            )
            return
        self.auth.set_keys(keys)
        log.info(
            "keys reloaded: %d key(s), ids %s",
            len(keys),
            " ".join(str(k) for k in sorted(keys)),
            extra={"event": "keys_reloaded", "key_ids": sorted(keys)},
        )

    def swap_in_ready(self) -> None:
        self.inner.swap_in_ready()

    def tick(self, now: float) -> float | None:
        self.auth.wall_offset_s = wall_offset_s()
        if self.watch_interval_s is not None and _stat_key(self.path) != self._seen:
            self.reload_keys()
        step = CLOCK_REFRESH_S if self.watch_interval_s is None else self.watch_interval_s
        inner = self.inner.tick(now)
        return now + step if inner is None else min(inner, now + step)

    def close(self) -> None:
        self.inner.close()
