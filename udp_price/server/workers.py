"""``--workers N``: N processes share the port with SO_REUSEPORT, one core and one loop each."""

from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.queues
import os
import queue
import signal
import socket
import time
from collections import Counter

from udp_price.catalog import Catalog
from udp_price.server.filewatch import FileState
from udp_price.server.logs import announce
from udp_price.server.loop import Control, bind_socket, handle_signals, serve
from udp_price.server.ops import build_server, operations

EXIT_OK = 0


def _worker(
    args: argparse.Namespace,
    catalog: Catalog,
    loaded_from: FileState | None,
    sock: socket.socket,
    index: int,
    results: multiprocessing.queues.Queue[tuple[int, dict[str, int]]],
) -> None:
    """One worker process: its own server core and loop on its own SO_REUSEPORT socket."""
    server, control = build_server(args, catalog), Control()
    ops = operations(server, args, control.wake, loaded_from)
    with sock, handle_signals(control):
        serve(sock, server, control, duties=ops)
        ops.close()
    results.put((index, server.counters()))
    control.close()


def run_workers(
    args: argparse.Namespace, catalog: Catalog, first: socket.socket, loaded_from: FileState | None = None
) -> int:
    """N processes share the port with SO_REUSEPORT; the kernel spreads flows over them by a hash
    of the source address. This process supervises: it forwards SIGTERM/SIGINT/SIGHUP and sums
    the workers' counters at the end. One reply cache and one rate limit per worker: a flow always
    hashes to the same worker, so each still sees all of one client's requests."""
    host, port = first.getsockname()[:2]
    sockets = [first] + [bind_socket(host, port, reuse_port=True) for _ in range(args.workers - 1)]
    ctx = multiprocessing.get_context("fork")
    results: multiprocessing.queues.Queue[tuple[int, dict[str, int]]] = ctx.Queue()
    # Ignored until each worker installs its own handler (SIG_IGN survives fork): a SIGHUP
    # forwarded to a worker still starting up must not kill it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    procs = [
        ctx.Process(target=_worker, args=(args, catalog, loaded_from, s, i, results), daemon=True)
        for i, s in enumerate(sockets)
    ]
    for proc in procs:
        proc.start()
    for s in sockets:
        s.close()  # each worker holds its own copy
    control = Control()
    with handle_signals(control):
        announce(
            f"udp_server: listening on {host}:{port} (udp), {len(catalog)} items, catalog version {catalog.version}, "
            f"catalog {os.path.abspath(args.catalog)}, "
            f"{args.workers} workers (pids {' '.join(str(p.pid) for p in procs)})",
            args.log_format,
            "listening",
            address=f"{host}:{port}",
            items=len(catalog),
            version=catalog.version,
        )
        while not control.stopped and any(p.is_alive() for p in procs):
            if control.reload_requested:
                control.reload_requested = False
                for proc in procs:
                    if proc.pid is not None:
                        os.kill(proc.pid, signal.SIGHUP)
            time.sleep(0.1)
    for proc in procs:
        if proc.is_alive() and proc.pid is not None:
            os.kill(proc.pid, signal.SIGTERM)
    totals: Counter[str] = Counter()
    per_worker = [0] * len(procs)
    for _ in procs:
        try:
            index, counters = results.get(timeout=10)
        except queue.Empty:
            break
        totals.update(counters)
        per_worker[index] = counters.get("requests", 0)
    for proc in procs:
        proc.join(10)
    summary = " ".join(f"{k}={v}" for k, v in sorted(totals.items()))
    announce(
        f"udp_server: stopped; workers_requests={','.join(map(str, per_worker))} {summary}",
        args.log_format,
        "stopped",
        counters=dict(totals),
    )
    control.close()
    return EXIT_OK
