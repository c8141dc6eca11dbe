"""``udp-price-proxy``: a fault-injecting UDP proxy (drop, duplicate, reorder, delay, corrupt,
truncate, blackhole), reproducible from its seed."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import socket
import sys
from dataclasses import fields
from typing import IO, Any

from udp_price.address import format_address
from udp_price.cli.common import add_version, address_arg, examples_for, listen_address_arg, prog_name
from udp_price.faults.plan import FaultPlan, Faults
from udp_price.faults.relay import FaultProxy

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


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog_name(prog, "fault_proxy.py"),
        description="UDP proxy that drops, duplicates, reorders, delays and corrupts datagrams, reproducibly.",
        epilog=examples_for(prog_name(prog, "fault_proxy.py"), EXAMPLES, "python fault_proxy.py"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_version(p)
    p.add_argument("--listen", type=listen_address_arg, default=("127.0.0.1", 9000), help="address for clients")
    p.add_argument("--upstream", type=address_arg, required=True, help="the real server HOST:PORT")
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
        print(
            f"fault_proxy: {format_address(proxy.address)} -> {format_address(proxy.upstream)}, seed {proxy.plan.seed}",
            flush=True,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), duration)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = build_parser(prog)
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
            print(f"fault_proxy: cannot listen on {format_address(args.listen)}: {e.strerror or e}", file=sys.stderr)
            return 5
    print(f"fault_proxy: stopped; seed={seed} {proxy.summary()}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
