"""Catalog reloads (SIGHUP, --watch) off the serving loop, and the server's periodic stats line.

Reading, hashing, parsing, validating and indexing a catalog (millions of items: seconds of work)
happen off the serving loop: a worker thread reads and hashes the file, and a file of a megabyte or
more is parsed and indexed by a child process (udp_price.server.catalog_child), so the parse
neither holds the server's GIL nor leaves its temporaries in the server's heap. The serving loop
only asks for a reload and, when the worker has a prepared catalog ready, swaps it in with one
reference assignment between two datagrams; the old catalog answers until then. At most one reload
runs at a time: requests during a reload make it run once more afterwards. A file whose content
hash equals the loaded one is a logged no-op. When --watch loads a changed file is decided by the
pure policy in udp_price.server.filewatch.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from udp_price.auth import ReplayWindow, ServerAuth
from udp_price.catalog import Catalog, parse_catalog_bytes, read_catalog_file
from udp_price.errors import CatalogError
from udp_price.server.catalog_child import CHILD_MIN_BYTES, parse_in_child
from udp_price.server.core import QuoteServer
from udp_price.server.filewatch import WATCH_POLL_S, WATCH_SETTLE_S, FileState, watch_decision
from udp_price.server.guards import RateLimiter, ReplyCache
from udp_price.server.keyring import KeyReloads
from udp_price.server.memory import return_freed_memory

log = logging.getLogger("udp_price.server")


class Served(Protocol):
    """What reloads need of the server core."""

    catalog: Catalog
    stats: Counter[str]

    def swap_catalog(self, prepared: Catalog) -> None: ...

    def summary(self) -> str: ...

    def counters(self) -> dict[str, int]: ...


@dataclass
class _Ready:
    """What the worker hands the serving loop: counters to add and maybe a catalog to swap in."""

    counts: list[str] = field(default_factory=list)
    catalog: Catalog | None = None


@dataclass
class Operations:
    """The server's duties besides quoting: catalog reload (SIGHUP, --watch) and stats logging.

    ``request_reload`` and ``tick`` never touch the file; ``swap_in_ready`` installs what the worker
    prepared. ``wake`` (optional) interrupts the serving loop's wait when something is ready."""

    server: Served
    catalog_path: str
    watch_interval_s: float | None = None
    stats_interval_s: float | None = None
    settle_s: float = WATCH_SETTLE_S
    wake: Callable[[], None] | None = None
    clock: Callable[[], float] = time.monotonic
    _loaded: FileState | None = None
    """The file as last loaded (or rejected as a bad catalog: it is not retried until it changes)."""
    _idle: FileState | None = None
    _pending: tuple[FileState, float] | None = None
    _refused: FileState | None = None
    """Last version refused for its missing final newline."""
    _last_inode: tuple[int, int] | None = None
    _next_stats: float = 0.0
    _cond: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _forced: bool = False
    _retired: list[Catalog] = field(default_factory=list, repr=False)
    _ready: _Ready = field(default_factory=_Ready, repr=False)
    _thread: threading.Thread | None = None
    _closing: bool = False
    child_min_bytes: int = CHILD_MIN_BYTES
    """Files at least this big are parsed in a child process (see udp_price.server.catalog_child)."""
    loaded_from: FileState | None = None
    """The state (stat and content hash) of the very bytes the serving catalog was parsed from, taken
    from the same read (udp_price.cli.server does). Reading the file again here would be a race: a
    file replaced by a rename between the start-up parse and that second read would be recorded as
    loaded and then look "unchanged" to SIGHUP and --watch forever, while the old prices are served."""

    def __post_init__(self) -> None:
        self._loaded = self.loaded_from if self.loaded_from is not None else self._state_if_serving()
        if self._loaded is not None:
            self._idle, self._last_inode = self._loaded, self._loaded.inode
        if self.watch_interval_s is not None:
            self._start()

    def _state_if_serving(self) -> FileState | None:
        """Without ``loaded_from``: the file's state only if its content is what is being served
        (same catalog version), else None (the next SIGHUP or --watch look then loads it). Costs a
        parse: callers that loaded the file themselves pass ``loaded_from`` instead."""
        read = self._read()
        if isinstance(read, CatalogError):
            return None
        state, raw = read
        try:
            same = parse_catalog_bytes(raw, self.catalog_path).version == self.server.catalog.version
        except CatalogError:
            return None
        return state if same else None

    # ------------------------------------------------ serving thread

    def reload(self) -> None:
        """SIGHUP: ask the worker to read, validate and prepare the file now; returns at once."""
        with self._cond:
            self._forced = True
            self._cond.notify()
        self._start()

    def swap_in_ready(self) -> None:
        """Install what the worker finished: one reference assignment, counters added. Cheap when
        nothing is ready (one attribute test), so the loop calls it on every wake-up."""
        if not self._ready.counts:
            return
        with self._cond:
            ready, self._ready = self._ready, _Ready()
        if ready.catalog is not None:
            old = self.server.catalog
            self.server.swap_catalog(ready.catalog)
            with self._cond:  # freed by the worker: dropping a million-item dict takes a while
                self._retired.append(old)
                self._cond.notify()
        self.server.stats.update(ready.counts)

    def tick(self, now: float) -> float | None:
        self.swap_in_ready()
        if self.stats_interval_s is None:
            return None
        if now >= self._next_stats:
            if self._next_stats:  # not at start-up: nothing has happened yet
                log.info(
                    "stats %s", self.server.summary(), extra={"event": "stats", "counters": self.server.counters()}
                )
            self._next_stats = now + self.stats_interval_s
        return self._next_stats

    def close(self) -> None:
        """Stop the worker (a reload in flight is finished first, bounded) and count its outcome:
        the exit summary then includes every reload that was asked for."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(10)
        self._ready.catalog = None  # serving is over: only the counters matter now
        self.swap_in_ready()

    # ------------------------------------------------ worker thread

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="catalog-reload", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        next_watch = self.clock()
        while True:
            with self._cond:
                self._cond.wait_for(self._has_work, timeout=self._wait_s(next_watch))
                forced, self._forced = self._forced, False
                retired, self._retired = self._retired, []
                if self._closing and not forced:  # a reload asked for before the stop still runs
                    return
            if retired:
                retired.clear()  # old catalogs are freed here, outside the lock and off the serving thread
                return_freed_memory()
            try:
                if forced:
                    self._reload_now()
                elif self.watch_interval_s is not None and self.clock() >= next_watch:
                    next_watch = self.clock() + self.watch_interval_s
                    self._watch(self.clock())
            except Exception:  # a bug here must not end reloads for the life of the process
                log.exception("internal error while reloading the catalog", extra={"event": "internal_error"})
                self._post(["internal_errors"])

    def _has_work(self) -> bool:
        return self._forced or self._closing or bool(self._retired)

    def _wait_s(self, next_watch: float) -> float | None:
        return None if self.watch_interval_s is None else max(0.0, next_watch - self.clock())

    def _post(self, counts: list[str], catalog: Catalog | None = None) -> None:
        with self._cond:
            self._ready.counts += counts
            if catalog is not None:
                self._ready.catalog = catalog
        if self.wake is not None:
            self.wake()

    def _read(self) -> tuple[FileState, bytes] | CatalogError:
        """The file's state and bytes, read once so what is hashed is exactly what gets loaded."""
        try:
            st, raw = read_catalog_file(self.catalog_path)
        except CatalogError as e:
            return e
        return FileState.of(st, raw), raw

    def _reload_now(self) -> None:
        self._install(self._read())

    def _install(self, read: tuple[FileState, bytes] | CatalogError) -> None:
        # The cyclic GC would run full collections over the million objects being built, each
        # holding the GIL (and so stalling the serving thread) for a few hundred ms. A catalog has
        # no reference cycles: paused while building, and what survives is frozen out of later
        # collections (old catalogs are still freed, by reference counting).
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            self._install_unpaused(read)
        finally:
            gc.freeze()
            if was_enabled:
                gc.enable()

    def _install_unpaused(self, read: tuple[FileState, bytes] | CatalogError) -> None:
        if isinstance(read, CatalogError):
            self._reject(read)
            return
        state, raw = read
        unchanged = self._loaded is not None and self._loaded.digest == state.digest
        self._loaded, self._idle, self._pending, self._last_inode = state, state, None, state.inode
        if unchanged:
            log.info(
                "catalog %s unchanged (same content hash); nothing to reload",
                self.catalog_path,
                extra={"event": "reload_unchanged"},
            )
            self._post(["reloads.unchanged"])
            return
        try:
            new, how = self._parse(raw)  # every wire limit included
        except CatalogError as e:
            self._reject(e)
            return
        old = self.server.catalog
        self._post(["reloads.ok", *how], new.prepared())
        log.info(
            "catalog reloaded: %d items, version %d (was %d)",
            len(new),
            new.version,
            old.version,
            extra={"event": "reloaded", "items": len(new), "version": new.version},
        )

    def _parse(self, raw: bytes) -> tuple[Catalog, list[str]]:
        """The new catalog, and ["reloads.in_process"] if a child should have parsed it and could not."""
        if len(raw) < self.child_min_bytes:
            return parse_catalog_bytes(raw, self.catalog_path), []
        catalog = parse_in_child(raw, self.catalog_path)
        if catalog is not None:
            return catalog, []
        log.warning(
            "could not parse catalog %s in a child process; parsing in the server (answers may pause)",
            self.catalog_path,
            extra={"event": "reload_in_process"},
        )
        return parse_catalog_bytes(raw, self.catalog_path), ["reloads.in_process"]

    def _reject(self, error: CatalogError) -> None:
        self._post(["reloads.failed"])
        # One record with every problem: separate records could be cut off by a shutdown that
        # lands between them, leaving "rejected" without the reason.
        log.error(
            "catalog reload rejected, still serving version %d: %s%s",
            self.server.catalog.version,
            self.catalog_path,
            "".join(f"\n  {problem}" for problem in error.problems),
            extra={"event": "reload_rejected", "problems": error.problems},
        )

    def _watch(self, now: float) -> None:
        """One --watch look at the file (policy in watch_decision)."""
        try:
            quick = FileState.of(os.stat(self.catalog_path))
        except OSError:
            return  # mid-rename, or removed: keep serving what we have
        if any(known is not None and known.same_stat(quick) for known in (self._refused, self._idle)):
            return  # unchanged since we last read it: not worth reading again
        read = self._read()
        if isinstance(read, CatalogError):
            if not os.path.lexists(self.catalog_path):
                return  # renamed away between the stat and the open: look again next time
            self._idle = self._refused = quick  # a FIFO, too big...: reported once, until it changes
            self._reject(read)
            return
        seen, raw = read
        decision = watch_decision(self._loaded, seen, self._last_inode, self._pending, now, self.settle_s)
        self._last_inode = seen.inode
        if decision == "idle":
            self._pending, self._idle = None, seen
        elif decision == "wait":
            if self._pending is None or self._pending[0] != seen:
                self._pending = (seen, now)
        elif not raw.endswith(b"\n"):
            self._refused, self._pending = seen, None
            self._post(["reloads.no_final_newline"])
            log.warning(
                "catalog %s changed but its last line has no newline (still being written?); not loaded",
                self.catalog_path,
                extra={"event": "reload_incomplete"},
            )
        else:
            self._install(read)


def operations(
    server: QuoteServer, args: argparse.Namespace, wake: Callable[[], None], loaded_from: FileState | None
) -> Operations | KeyReloads:
    """The server's Operations; ``loaded_from``: the state of the bytes its catalog was parsed from.
    With --keys, wrapped so every catalog reload reloads the keys file too."""
    ops = Operations(
        server,
        args.catalog,
        watch_interval_s=WATCH_POLL_S if args.watch else None,
        stats_interval_s=args.stats_interval or None,
        settle_s=args.watch_settle,
        wake=wake,
        loaded_from=loaded_from,
    )
    if server.auth is None:
        return ops
    return KeyReloads(ops, server.auth, args.keys, WATCH_POLL_S if args.watch else None)


def build_server(args: argparse.Namespace, catalog: Catalog) -> QuoteServer:
    limiter = RateLimiter(rate=args.rate, burst=max(1.0, args.burst)) if args.rate > 0 else None
    cache = ReplyCache(max_entries=args.cache_size, max_age_s=args.cache_age) if args.cache_size > 0 else None
    keys = getattr(args, "auth_keys", None)  # read by the command line (udp_price.cli.server) at start
    # The replay window is in memory: whatever was signed before this process started is refused,
    # so a request captured before a restart (or a worker's start) is not answered again.
    started = ReplayWindow(not_before_ms=int(time.time() * 1000))
    auth = ServerAuth(keys, allow_anonymous=args.allow_anonymous, replay=started) if keys else None
    return QuoteServer(catalog, limiter=limiter, cache=cache, auth=auth)
