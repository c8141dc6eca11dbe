"""What the overload check costs the server per datagram: this tree's server against a baseline
revision's, same load generator, alternating rounds.

The check (issue 19) adds, per datagram, one integer test on the receive path and one boolean
test on the send path, and per wake-up one recvmsg (for SO_RXQ_OVFL) instead of a recvfrom. The
load (bench/run.py's pipelined generator, 32 in flight, one source, rate limit out of the way)
never fills the socket, so no reply is marked: this is the cost of checking, paid by everyone.

    python bench/overload_cost.py                       # baseline: the commit before issue 19's
    python bench/overload_cost.py --baseline 2a16b12 --rounds 9 --requests 100000
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from run import pipelined, process, requests_fresh

ROOT = Path(__file__).resolve().parent.parent
BASELINE = "2a16b12"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", default=BASELINE, help=f"git revision to compare with (default {BASELINE})")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--requests", type=int, default=50_000)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="overload-cost") as tmp:
        archive = subprocess.run(["git", "archive", args.baseline], cwd=ROOT, check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        flags = ["--port", "0", "--rate", "100000000", "--burst", "100000000"]
        old_rates: list[float] = []
        new_rates: list[float] = []
        ratios: list[float] = []
        for r in range(args.rounds):
            rates = {}
            order = ("old", "new") if r % 2 == 0 else ("new", "old")
            for which in order:
                server = str(Path(tmp) / "udp_server.py") if which == "old" else "udp_server.py"
                with process(server, *flags) as addr:
                    rates[which] = pipelined(addr, requests_fresh(args.requests))
            old_rates.append(rates["old"])
            new_rates.append(rates["new"])
            ratios.append(rates["new"] / rates["old"])
    print(f"baseline {args.baseline}: {statistics.median(old_rates):9,.0f} replies/s (median of {args.rounds})")
    print(f"this tree:        {statistics.median(new_rates):9,.0f} replies/s")
    print(f"ratio this/baseline: {statistics.median(ratios):.3f} (median of the rounds' ratios)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
