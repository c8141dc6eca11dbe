"""The catalog file as --watch sees it, and the pure policy deciding when a changed file is loaded.

No I/O here: ``FileState.of`` takes a stat result (and the bytes already read), and
``watch_decision`` is given the time; the reads, the clock and the reload itself are
``udp_price.server.ops``'s.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

WATCH_POLL_S = 0.5
"""How often --watch looks at the catalog file (a stat; the file is read only when it changed)."""
WATCH_SETTLE_S = 2.0
"""Default --watch-settle: a file written in place (or created and written) must stay unchanged this
long before it is loaded."""


@dataclass(frozen=True)
class FileState:
    """What --watch compares: the file's identity, size, mtime and ctime, and (once read) its content hash."""

    inode: tuple[int, int]
    size: int
    mtime_ns: int
    digest: bytes = b""
    ctime_ns: int = 0

    @classmethod
    def of(cls, st: os.stat_result, raw: bytes | None = None) -> FileState:
        digest = hashlib.blake2b(raw, digest_size=16).digest() if raw is not None else b""
        return cls((st.st_dev, st.st_ino), st.st_size, st.st_mtime_ns, digest, st.st_ctime_ns)

    def same_stat(self, other: FileState) -> bool:
        return (self.inode, self.size, self.mtime_ns, self.ctime_ns) == (
            other.inode,
            other.size,
            other.mtime_ns,
            other.ctime_ns,
        )

    @property
    def looks_renamed(self) -> bool:
        """rename(2) updates the file's ctime, not its mtime; a file created and written by its
        writer has ctime == mtime (every write sets both). So ctime later than mtime means the
        file was complete before it got this name. (Renamed within the same clock tick as its
        last write, it looks fresh and simply waits for the settle interval.)"""
        return self.ctime_ns > self.mtime_ns


def watch_decision(
    loaded: FileState | None,
    seen: FileState,
    last_inode: tuple[int, int] | None,
    pending: tuple[FileState, float] | None,
    now: float,
    settle_s: float,
) -> str:
    """Pure --watch policy: "idle" (nothing new), "wait" (changed, not settled yet) or "load".

    ``seen`` is the file now, content hashed; ``last_inode`` the file's identity at the previous
    look; ``pending`` a changed version and when it was first seen. Another inode that looks renamed
    in (ctime later than mtime, see FileState.looks_renamed) is complete by construction and is
    loaded at once. Anything else - rewritten in place, or unlinked and created anew the way
    vim (backupcopy=no), install or cp --remove-destination do - may be caught between two writes,
    so it is loaded only after size, mtime, ctime and content hash stayed the same for ``settle_s``
    seconds. (The caller also never loads a file whose last byte is not a newline.)"""
    if loaded is not None and loaded.digest == seen.digest:
        return "idle"
    if seen.inode != last_inode and seen.looks_renamed:
        return "load"
    if pending is None or pending[0] != seen:
        return "wait"
    return "load" if now - pending[1] >= settle_s else "wait"
