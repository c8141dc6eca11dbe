"""Kernel-level loss, no proxy in the path: two network namespaces joined by a veth pair, and an
nftables rule dropping UDP at random on each namespace's input hook (tc netem is
missing on these kernels, and an output-hook drop makes sendto() fail with EPERM instead of losing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from helpers import ROOT
from rootenv import require

pytestmark = pytest.mark.root
SERVER_IP, CLIENT_IP, PORT = "10.199.0.1", "10.199.0.2", 9999


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True, timeout=30)


def drop_rules(percent: int) -> str:
    """An nft -f ruleset; one statement per line (the one-line form trips nft's parser)."""
    return (
        "table inet udp_price_loss {\n chain input {\n  type filter hook input priority 0; policy accept;\n"
        f"  meta l4proto udp numgen random mod 100 < {percent} drop\n }}\n}}\n"
    )


@contextmanager
def two_hosts(percent: int) -> Iterator[tuple[str, str]]:
    """Namespaces (server, client) on 10.199.0.0/24 with P% UDP loss inbound on each; always cleaned up."""
    tag = f"{os.getpid() % 100000}"
    srv, cli = f"udpp-srv-{tag}", f"udpp-cli-{tag}"
    try:
        sh("ip", "netns", "add", srv)
        sh("ip", "netns", "add", cli)
        sh("ip", "link", "add", f"vs{tag}", "netns", srv, "type", "veth", "peer", "name", f"vc{tag}", "netns", cli)
        for ns, dev, ip in ((srv, f"vs{tag}", SERVER_IP), (cli, f"vc{tag}", CLIENT_IP)):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            subprocess.run(
                ["ip", "netns", "exec", ns, "nft", "-f", "-"],
                input=drop_rules(percent),
                check=True,
                capture_output=True,
                text=True,
                timeout=30,
            )
        yield srv, cli
    finally:
        for ns in (srv, cli):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.mark.parametrize("percent", [10, 30])
def test_kernel_loss_every_quote_exact(percent: int) -> None:
    require("ip", "nft")
    with two_hosts(percent) as (srv, cli):
        server = subprocess.Popen(
            ["ip", "netns", "exec", srv, sys.executable, "udp_server.py", "--host", SERVER_IP, "--port", str(PORT)],
            cwd=ROOT,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert server.stdout is not None
            assert "listening on" in server.stdout.readline()
            run = subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    cli,
                    sys.executable,
                    "tests/netns_client.py",
                    SERVER_IP,
                    str(PORT),
                    "300",
                    f"kernel loss {percent}%",
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=300,
            )
        finally:
            server.terminate()
            out, _ = server.communicate(timeout=10)
        assert run.returncode == 0, run.stderr
        print(run.stdout.splitlines()[0])
        report = json.loads(run.stdout.splitlines()[-1])
        assert report["wrong"] == 0, report["problems"]
        assert report["completed"] == report["sent"] == 300
        # PATIENT's 40 attempts hide no waste: a round trip gets through with p = (1 - loss)**2.
        assert report["mean_attempts"] < 1.5 / (1 - percent / 100) ** 2, report
        assert report["client"].get("retransmissions", 0) > 0, "the kernel must actually have dropped something"
        assert "stopped; " in out
