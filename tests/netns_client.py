"""Client half of the kernel-loss tests: run inside a network namespace, print a JSON report.

python tests/netns_client.py HOST PORT N NAME
"""

from __future__ import annotations

import asyncio
import json
import sys
import zlib

from faultlib import PATIENT, Report, judge_all, orders, quote_all

from udp_price.client.api import QuoteClient


async def main(host: str, port: int, n: int, name: str) -> Report:
    work = orders(n, seed=zlib.crc32(name.encode()))
    async with QuoteClient((host, port), PATIENT) as client:
        outcomes = await quote_all(client, work)
        report = Report(name, sent=n)
        report.client.update(client.stats)
    return judge_all(report, work, outcomes)


if __name__ == "__main__":
    host, port, n, name = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    r = asyncio.run(main(host, port, n, name))
    print(
        json.dumps(
            {
                "sent": r.sent,
                "completed": r.completed,
                "failed": r.failed,
                "wrong": r.wrong,
                "mean_attempts": r.mean_attempts,
                "client": dict(r.client),
                "problems": r.problems[:5],
            }
        )
    )
