"""Review of the CLI conventions (issue 16): a failing decision log never stops the relay; absurd
and non-finite numbers are usage errors; every --json failure is one JSON object on stdout; the
metrics address is in the start line; quiet shutdowns."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import urllib.request
from collections import Counter

import pytest
from helpers import PY, ROOT, run_cli, spawn, start_server

from udp_price.cli import client as client_cli
from udp_price.cli.proxy import plan_from_flags
from udp_price.client.api import quote_once
from udp_price.client.retry import RetryPolicy
from udp_price.wire import Status

QUOTES = 120
"""Enough decision records (two per quote, ~170 bytes each) to overflow an 8 KiB write buffer twice."""


@pytest.fixture(scope="module")
def server() -> object:
    proc, (host, port) = start_server()
    yield f"{host}:{port}"
    proc.terminate()
    proc.communicate(timeout=10)


def _proxy(upstream: str, log: str, stdout: int) -> subprocess.Popen[str]:
    args = [PY, "fault_proxy.py", "--listen", "127.0.0.1:0", "--upstream", upstream, "--log", log]
    return subprocess.Popen(args, cwd=ROOT, text=True, stdout=stdout, stderr=subprocess.PIPE)


@pytest.mark.parametrize("log", ["-", "/dev/full"])
def test_a_failing_decision_log_never_stops_the_relay(server: str, log: str) -> None:
    proxy = _proxy(server, log, subprocess.PIPE)
    assert proxy.stdout is not None and proxy.stderr is not None
    banner_stream = proxy.stderr if log == "-" else proxy.stdout
    listen = banner_stream.readline().split()[1]
    if log == "-":
        proxy.stdout.close()  # the reader goes away, as with '| head'
    host, _, port = listen.rpartition(":")
    outcomes = Counter(
        quote_once((host, int(port)), "apple", 1, RetryPolicy(deadline_s=5)).status for _ in range(QUOTES)
    )
    proxy.send_signal(signal.SIGTERM)
    out, err = proxy.communicate(timeout=10)
    assert outcomes == Counter({Status.OK: QUOTES})
    assert proxy.returncode == 4, err
    assert err.count("decision log stopped") == 1 and "Traceback" not in err and "Exception" not in err, err
    summary = err if log == "-" else out
    assert "fault_proxy: stopped;" in summary and "log_errors=1" in summary, summary


UPSTREAM = ["--upstream", "127.0.0.1:9"]
ABSURD = [
    ("udp_client.py", ["--deadline", "inf", "quote", "apple", "1"], "--deadline"),
    ("udp_client.py", ["--deadline", "1e18", "web", "--listen", "127.0.0.1:0"], "--deadline must be at most 86400 s"),
    ("udp_client.py", ["--deadline", "nan", "items"], "not a number of seconds"),
    ("udp_client.py", ["quote", "apple", "1", "--timeout", "1e300"], "--timeout must be at most 60 s"),
    ("udp_client.py", ["--timeout", "-inf", "items"], "--timeout"),
    ("fault_proxy.py", [*UPSTREAM, "--burst-loss", "0.5", "--burst-len", "nan"], "--burst-len"),
    ("fault_proxy.py", [*UPSTREAM, "--blackhole", "nan:"], "--blackhole"),
    ("fault_proxy.py", [*UPSTREAM, "--delay", "99999999999999999999s"], "--delay"),
    ("fault_proxy.py", [*UPSTREAM, "--duration", "100000"], "--duration"),
    ("udp_server.py", ["--rate", "nan"], "--rate"),
    ("udp_server.py", ["--burst", "inf"], "--burst"),
    ("udp_server.py", ["--cache-age", "nan"], "--cache-age"),
    ("udp_server.py", ["--stats-interval", "nan"], "--stats-interval"),
    ("udp_server.py", ["--stats-interval", "0.001"], "--stats-interval must be 0 (only at exit) or >= 0.1 s"),
]


@pytest.mark.parametrize(("script", "args", "says"), ABSURD)
def test_non_finite_and_absurd_numbers_are_usage_errors(script: str, args: list[str], says: str) -> None:
    r = run_cli(script, *args, timeout=20)
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr


JSON_FAILURES = [
    (["quote", "apple", "0"], "quantity 0 is out of range"),
    (["quote", "apple", "abc"], "not a whole number"),
    (["quote", "apple", "99999999999"], "quantity"),
    (["items", "--prefix", "x" * 40], "the wire field holds 32"),
    (["bulk", "/nonexistent.csv"], "/nonexistent.csv: cannot read"),
    (["quote", "apple", "1", "--deadline", "inf"], "--deadline"),
]


@pytest.mark.parametrize(("args", "says"), JSON_FAILURES)
def test_every_json_failure_is_one_json_object_on_stdout(server: str, args: list[str], says: str) -> None:
    r = run_cli("udp_client.py", "--server", server, *args, "--json", timeout=20)
    failure = json.loads(r.stdout)
    assert r.returncode == 2 and failure["status"] == "USAGE" and says in failure["error"], r.stdout
    assert says in r.stderr and len(r.stdout.splitlines()) == 1


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_the_start_line_names_the_metrics_address(log_format: str) -> None:
    args = ["udp_server.py", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "-q"]
    proc, line = spawn([*args, "--log-format", log_format], "listening")
    try:
        url = json.loads(line)["metrics"] if log_format == "json" else line.split(", metrics ")[1].strip()
        body = urllib.request.urlopen(url, timeout=10).read().decode()
        assert url.startswith("http://127.0.0.1:") and "udp_price_requests_total" in body
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_sigterm_with_open_control_connections_is_quiet(server: str) -> None:
    args = ["fault_proxy.py", "--upstream", server, "--listen", "127.0.0.1:0", "--control", "127.0.0.1:0"]
    proxy, first = spawn(args, "control API on")
    host, _, port = first.split("http://")[1].split("/")[0].rpartition(":")
    idle = [socket.create_connection((host, int(port)), timeout=10) for _ in range(3)]
    for conn in idle:
        conn.sendall(b"GET /counters HTTP/1.1\r\n")  # a request head that never ends
    with socket.create_connection((host, int(port)), timeout=10) as last:  # answered after the three were accepted
        last.sendall(b"GET /counters HTTP/1.1\r\n\r\n")
        assert last.recv(100).startswith(b"HTTP/1.1 200")
    proxy.send_signal(signal.SIGTERM)
    out, err = proxy.communicate(timeout=10)
    for conn in idle:
        conn.close()
    assert proxy.returncode == 0 and err == "" and "fault_proxy: stopped;" in out, err


def test_server_whose_stdout_reader_left_stops_cleanly() -> None:
    proc, line = spawn(["udp_server.py", "--listen", "127.0.0.1:0", "--log-format", "json"], "listening")
    host, _, port = json.loads(line)["address"].rpartition(":")
    assert proc.stdout is not None
    proc.stdout.close()  # as 'udp_server.py --log-format json | head -n 1' does after the start line
    assert quote_once((host, int(port)), "apple", 1, RetryPolicy(deadline_s=5)).status is Status.OK
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--loss", "10%", "--drop", "0.2"], "--loss and --drop are two spellings of one flag"),
        (["--gemodel", "1%", "--drop", "0.2"], "--gemodel and --drop are two loss models"),
        (["--gemodel-up", "1%", "--drop-up", "0.2"], "--gemodel and --drop are two loss models; give one (up)"),
    ],
)
def test_proxy_refuses_two_spellings_or_two_loss_models(args: list[str], says: str) -> None:
    r = run_cli("fault_proxy.py", *UPSTREAM, *args)
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_shared_flags_after_the_subcommand_win_and_verbosity_adds_up() -> None:
    parser = client_cli.build_parser("udp_client.py")
    args = parser.parse_args(["--deadline", "1", "-v", "quote", "apple", "1", "--deadline", "2", "-v"])
    client_cli.check_combinations(parser, args)
    assert args.deadline == 2.0 and args.verbosity == 2
    quiet = parser.parse_args(["-q", "items", "-q"])
    client_cli.check_combinations(parser, quiet)
    assert quiet.verbosity == -2


def test_a_directions_loss_model_replaces_the_one_given_for_both() -> None:
    plan = plan_from_flags(["--drop", "30%", "--drop-correlation", "25%", "--gemodel-down", "1%"], seed=1)
    assert plan.up.drop == 0.3 and plan.up.gemodel is None
    assert plan.down.drop == 0.0 and plan.down.drop_correlation == 0.0 and plan.down.gemodel is not None
