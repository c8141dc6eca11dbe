"""``udp-price-proxy``: a fault-injecting UDP proxy (drop, duplicate, reorder, delay, corrupt,
truncate, blackhole), reproducible from its seed."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, NoReturn

from udp_price.address import format_address
from udp_price.cli import netem
from udp_price.cli.capture import close_capture, open_capture
from udp_price.cli.common import (
    add_verbosity,
    add_version,
    address_arg,
    examples_for,
    finite_number,
    listen_address_arg,
    prog_name,
    verbosity,
)
from udp_price.faults.control import ControlServer, is_loopback, plan_as_json
from udp_price.faults.plan import FaultPlan, Faults
from udp_price.faults.relay import FaultProxy

EXIT_LOG_FAILED = 4
"""Stopped normally, but the decision log or the --pcap capture could not be written to the end
(relaying went on)."""

EXAMPLES = """\
examples:
  # 30% loss each way in front of a server on 9999; clients talk to 9000
  python fault_proxy.py --listen 127.0.0.1:9000 --upstream 127.0.0.1:9999 --drop 30% --seed 7
  # as tc qdisc ... netem delay 100ms 10ms loss 5% 25% rate 1mbit limit 100
  python fault_proxy.py --upstream 127.0.0.1:9999 --delay 100ms --jitter 10ms --drop 5% \\
      --drop-correlation 25% --rate 1mbit --limit 100
  # netem gemodel p r 1-h 1-k, client -> server only; change the faults later over HTTP
  python fault_proxy.py --upstream 127.0.0.1:9999 --gemodel-up 1% 30% 100% 0% --control 127.0.0.1:8474
  curl -X PUT -d '{"faults": ["--drop", "50%"]}' http://127.0.0.1:8474/plan
  # bursty loss up, duplicates down, every decision logged
  python fault_proxy.py --upstream 127.0.0.1:9999 --burst-loss-up 0.3 --burst-len 3 --duplicate-down 0.2 \\
      --log decisions.jsonl
  # capture what came in and what went out, with each fault as a packet comment (Wireshark:
  # contrib/wireshark/udp_price.lua, see docs/testing.md)
  python fault_proxy.py --upstream 127.0.0.1:9999 --drop 30% --pcap faults.pcapng
  # lose the first two datagrams of every flow, and everything from 5 s to 7 s after start
  python fault_proxy.py --upstream 127.0.0.1:9999 --drop-index-up 0,1 --blackhole 5:7

Each fault flag X also exists as X-up (client -> server) and X-down (server -> client).
Probabilities: 0.3 or 30%. Times: 100ms, 250us, 1.5s (a bare number is seconds). Rates: bit, kbit,
mbit, gbit per second, or bps, kbps, mbps (bytes per second), as tc writes them.
Stop with Ctrl-C or SIGTERM: the counters are printed on exit.
exit codes: 0 stopped, 2 bad arguments (or --log / --pcap cannot be written at start), 4 stopped, but the
decision log or the capture failed (relaying went on), 5 cannot listen
"""


def parse_windows(text: str) -> tuple[tuple[float, float | None], ...]:
    """'2:4,10:' -> ((2.0, 4.0), (10.0, None)); ':' alone or '0:' means forever from the start."""
    windows: list[tuple[float, float | None]] = []
    for part in text.split(","):
        start, sep, end = part.partition(":")
        try:
            s = finite_number(start or "0")
            e = finite_number(end) if end else None
        except argparse.ArgumentTypeError:
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


@dataclass(frozen=True)
class FaultFlag:
    """One fault flag: its Faults field, argparse type, metavar, help, and the netem words it mirrors."""

    flag: str
    field: str
    kind: Callable[[str], Any]
    metavar: str
    help: str
    nargs: str | None = None


FAULT_FLAGS = (
    FaultFlag("drop", "drop", netem.probability, "P", "independent loss, 0.3 or 30% (netem loss random P)"),
    FaultFlag(
        "drop-correlation", "drop_correlation", netem.probability, "P", "loss correlation (netem loss P CORRELATION)"
    ),
    FaultFlag("burst-loss", "burst_loss", netem.probability, "P", "long-run loss rate of Gilbert-Elliott burst loss"),
    FaultFlag(
        "burst-len", "burst_len", finite_number, "N", "mean burst length in datagrams, with --burst-loss (default 1)"
    ),
    FaultFlag(
        "gemodel",
        "gemodel",
        str,
        "P",
        "netem gemodel p [r [1-h [1-k]]]: 1 to 4 probabilities (r default 1-p, 1-h 100%, 1-k 0%)",
        nargs="+",
    ),
    FaultFlag("duplicate", "duplicate", netem.probability, "P", "deliver a second copy (netem duplicate P)"),
    FaultFlag("reorder", "reorder", netem.probability, "P", "hold a datagram back so later ones overtake it"),
    FaultFlag(
        "reorder-delay", "reorder_delay_s", netem.duration, "TIME", "how long --reorder holds one (default 100ms)"
    ),
    FaultFlag(
        "reorder-gap",
        "reorder_gap",
        netem.count,
        "N",
        "netem reorder P gap N: every datagram waits --delay except one sent at once, with probability "
        "--reorder, after each N-1",
    ),
    FaultFlag("delay", "delay_s", netem.duration, "TIME", "delay every datagram: 100ms, 250us, 1.5s (netem delay)"),
    FaultFlag("jitter", "jitter_s", netem.duration, "TIME", "extra delay, uniform in [0, TIME] (netem delay D JITTER)"),
    FaultFlag("corrupt", "corrupt", netem.probability, "P", "flip 1-3 bits (netem corrupt P)"),
    FaultFlag("truncate", "truncate", netem.probability, "P", "cut the datagram short (Toxiproxy slicer, nearest)"),
    FaultFlag("rate", "rate_bps", netem.rate, "RATE", "bandwidth: 1mbit, 64kbit, 125kbps (netem rate; bytes: bps)"),
    FaultFlag("limit", "limit", netem.count, "N", "datagrams held at once before tail drop (netem limit)"),
    FaultFlag("blackhole", "blackhole", parse_windows, "S:E", "lose everything in these windows, seconds since start"),
    FaultFlag("drop-index", "drop_indices", parse_indices, "I,J", "drop these 0-based datagram indices of every flow"),
)
_ALIASES = {"drop": ["--loss"]}
"""netem's word for it, accepted as well."""


class PlanError(ValueError):
    """Fault flags that do not make a plan (used by the control API, which must not exit)."""


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise PlanError(message)


def add_fault_flags(p: argparse.ArgumentParser) -> None:
    both = p.add_argument_group("faults, both directions (each also exists as --FLAG-up and --FLAG-down)")
    one = p.add_argument_group("faults, one direction: up = client -> server, down = server -> client")
    for f in FAULT_FLAGS:
        text = f.help if "default" in f.help else f"{f.help} (default off)"
        kind = {"type": f.kind} if f.nargs is None else {"nargs": f.nargs}
        both.add_argument(f"--{f.flag}", dest=f.field, metavar=f.metavar, help=text.replace("%", "%%"), **kind)
        for alias in _ALIASES.get(f.flag, []):  # its own dest, so that both spellings at once are seen
            both.add_argument(alias, dest=_alias_dest(alias), metavar=f.metavar, help=f"the same as --{f.flag}", **kind)
        for d in ("up", "down"):
            one.add_argument(
                f"--{f.flag}-{d}", dest=f"{f.field}_{d}", metavar=f.metavar, help=f"--{f.flag}, {d} only", **kind
            )


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog_name(prog, "fault_proxy.py"),
        usage="%(prog)s --upstream HOST:PORT [--listen HOST:PORT] [options] [fault flags]",
        description="UDP proxy that drops, duplicates, reorders, delays and corrupts datagrams, reproducibly.",
        epilog=examples_for(prog_name(prog, "fault_proxy.py"), EXAMPLES, "python fault_proxy.py"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_version(p)
    p.add_argument(
        "--listen",
        type=listen_address_arg,
        default=("127.0.0.1", 9000),
        metavar="HOST:PORT",
        help="address for clients (default 127.0.0.1:9000; port 0: any free port)",
    )
    p.add_argument(
        "--upstream", type=address_arg, required=True, metavar="HOST:PORT", help="the real server (required)"
    )
    p.add_argument("--seed", type=int, default=None, help="seed for every decision (default: random, printed)")
    p.add_argument(
        "--log",
        metavar="FILE",
        help="one JSON line per datagram to FILE ('-': stdout, which then carries only those lines)",
    )
    p.add_argument(
        "--pcap",
        metavar="FILE",
        help="pcapng capture of every datagram received and sent, each with what the proxy did to it as a "
        "packet comment and its direction (flushed on exit, SIGINT or SIGTERM)",
    )
    p.add_argument(
        "--duration", type=netem.positive_duration, default=None, metavar="TIME", help="stop after TIME (default never)"
    )
    p.add_argument(
        "--control",
        type=listen_address_arg,
        default=None,
        metavar="HOST:PORT",
        help="loopback HTTP API to read counters and replace the faults while running, like Toxiproxy's "
        "(e.g. 127.0.0.1:8474; off by default)",
    )
    add_verbosity(p)
    add_fault_flags(p)
    return p


def _alias_dest(alias: str) -> str:
    return "alias_" + alias.lstrip("-").replace("-", "_")


def _merge_aliases(args: argparse.Namespace) -> None:
    """--loss is --drop: either spelling, but not both (which value was meant?)."""
    for f in FAULT_FLAGS:
        for alias in _ALIASES.get(f.flag, []):
            value = getattr(args, _alias_dest(alias), None)
            if value is None:
                continue
            if getattr(args, f.field, None) is not None:
                raise ValueError(f"{alias} and --{f.flag} are two spellings of one flag; give one")
            setattr(args, f.field, value)


def plan_from_args(args: argparse.Namespace, seed: int) -> FaultPlan:
    """The plan the fault flags describe; ValueError (one line) for a combination that makes no sense."""
    _merge_aliases(args)

    def given(f: FaultFlag, direction: str) -> Any:
        specific = getattr(args, f"{f.field}_{direction}", None)
        return specific if specific is not None else getattr(args, f.field, None)

    def faults(direction: str) -> Faults:
        values: dict[str, Any] = {}
        for f in FAULT_FLAGS:
            value = given(f, direction)
            if value is not None:
                values[f.field] = value
        one_loss_model(
            values, {f.field for f in FAULT_FLAGS if getattr(args, f"{f.field}_{direction}", None) is not None}
        )
        if "gemodel" in values:
            try:
                values["gemodel"] = netem.gemodel(values["gemodel"])
            except argparse.ArgumentTypeError as e:
                raise ValueError(str(e)) from None
        refuse_nonsense(values, direction)
        return Faults(**values)

    return FaultPlan(up=faults("up"), down=faults("down"), seed=seed)


def one_loss_model(values: dict[str, Any], specific: set[str]) -> None:
    """--drop (netem 'loss random') and --gemodel ('loss gemodel') are two loss models of one
    channel: given at the same level, refused (by refuse_nonsense); a direction's own flag
    (--gemodel-down) replaces the other model given for both directions (--drop), as every
    --FLAG-DIR overrides --FLAG."""
    if "gemodel" not in values or "drop" not in values or ("gemodel" in specific) == ("drop" in specific):
        return
    general = {"gemodel"} if "drop" in specific else {"drop", "drop_correlation"}
    for name in general - specific:
        values.pop(name, None)


def refuse_nonsense(values: dict[str, Any], direction: str) -> None:
    """Flags that would be silently ignored are refused: they mean the user expects something else."""
    needs = [
        ("burst_len", "burst_loss", "--burst-len needs --burst-loss"),
        ("drop_correlation", "drop", "--drop-correlation needs --drop"),
        ("reorder_gap", "reorder", "--reorder-gap needs --reorder"),
        ("reorder_gap", "delay_s", "--reorder-gap needs --delay (the datagrams the reordered one overtakes)"),
        ("reorder_delay_s", "reorder", "--reorder-delay needs --reorder"),
    ]
    for flag, needed, message in needs:
        if flag in values and needed not in values:
            raise ValueError(f"{message} ({direction})")
    if "gemodel" in values and "drop" in values:  # netem too takes one loss model: 'loss random' or 'loss gemodel'
        raise ValueError(f"--gemodel and --drop are two loss models; give one ({direction})")
    if "reorder_gap" in values and "reorder_delay_s" in values:
        raise ValueError("--reorder-delay and --reorder-gap are two reorder models; give one")


def plan_from_flags(flags: list[str], seed: int) -> FaultPlan:
    """A plan from fault flags alone (the control API's PUT /plan): PlanError for anything wrong."""
    p = _RaisingParser(prog="plan", add_help=False)
    add_fault_flags(p)
    try:
        return plan_from_args(p.parse_args(flags), seed)
    except ValueError as e:
        raise PlanError(str(e)) from None


async def _run(proxy: FaultProxy, args: argparse.Namespace, say: Callable[[str], None]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with proxy:
        control = ControlServer(proxy, plan_from_flags)
        if args.control is not None:
            try:
                at = await control.start(*args.control)
            except (OSError, ValueError) as e:
                where = format_address(args.control)
                print(f"fault_proxy: cannot serve the control API on {where}: {_why(e)}", file=sys.stderr)
                return 5
            say(f"fault_proxy: control API on http://{format_address(at)}/ (GET /counters, GET or PUT /plan)")
        say(f"fault_proxy: {format_address(proxy.address)} -> {format_address(proxy.upstream)}, seed {proxy.plan.seed}")
        if args.verbosity > 0:
            say(f"fault_proxy: plan {json.dumps(plan_as_json(proxy.plan))}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.duration)
        await control.stop()
    return 0


def _why(e: BaseException) -> str:
    return str(e.strerror) if isinstance(e, OSError) and e.strerror else str(e)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    args.verbosity = verbosity(parser, args)
    if args.control is not None and not is_loopback(args.control[0]):
        parser.error(f"--control {args.control[0]}: the control API has no authentication; give a loopback address")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    try:
        plan = plan_from_args(args, seed)
    except ValueError as e:
        parser.error(str(e))
    # Human lines go to stdout as before, unless stdout carries the JSON decision log: then stderr,
    # so 'fault_proxy.py --log - | jq' sees JSON lines only. -q: no human lines at all.
    human = sys.stderr if args.log == "-" else sys.stdout

    def say(line: str) -> None:
        if args.verbosity >= 0:
            print(line, file=human, flush=True)

    capture = open_capture(args.pcap, args.log)
    if isinstance(capture, str):
        print(capture, file=sys.stderr)
        return 2
    log: IO[str] | None = None
    try:
        if args.log == "-":
            log = sys.stdout
        elif args.log:
            log = open(args.log, "w", encoding="utf-8")  # noqa: SIM115 - closed by _close_log, errors and all
    except OSError as e:
        print(f"fault_proxy: cannot open log {args.log}: {e.strerror}", file=sys.stderr)
        close_capture(capture)
        return 2
    proxy = FaultProxy(plan, upstream=args.upstream, listen=args.listen, log=log, capture=capture)
    try:
        code = asyncio.run(_run(proxy, args, say))
    except socket.gaierror as e:
        print(f"fault_proxy: cannot resolve upstream {args.upstream[0]}: {e.strerror or e}", file=sys.stderr)
        code = 2
    except OSError as e:
        print(f"fault_proxy: cannot listen on {format_address(args.listen)}: {e.strerror or e}", file=sys.stderr)
        code = 5
    _close_log(proxy, log)
    capture_failed = close_capture(capture)
    if code:
        return code
    say(f"fault_proxy: stopped; seed={seed} {proxy.summary()}")
    return EXIT_LOG_FAILED if proxy.log_error is not None or capture_failed else 0


def _close_log(proxy: FaultProxy, log: IO[str] | None) -> None:
    """Flush and close the decision log; a write error is counted, never a traceback at exit."""
    proxy.close_log()
    if log is None:
        return
    if proxy.log_error is not None:
        # What is still buffered cannot be written: point the descriptor at /dev/null so the
        # interpreter's own flush at exit (of stdout) or close() finds nowhere to fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), log.fileno())
    if log is not sys.stdout:
        with contextlib.suppress(OSError):
            log.close()


if __name__ == "__main__":
    raise SystemExit(main())
