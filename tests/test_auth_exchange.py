"""Authenticated exchanges over real loopback sockets: the fault matrix with keys on, an on-path
fake server that cannot get a wrong price accepted, bulk with keys, and the command lines
(keys files, wrong keys, a server without keys, a rotation by SIGHUP)."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from faultlib import PATIENT, run_scenario
from helpers import CATALOG, PY, ROOT, RunningServer, expected_prices, run_cli, serving, start_server
from test_fault_matrix import ATTEMPTS, COMPLETE, check_server_matches_proxy

from udp_price.auth import Key, ServerAuth, new_key_line, sign
from udp_price.catalog import load_catalog
from udp_price.client.api import NoAnswer, QuoteClient
from udp_price.client.retry import RetryPolicy
from udp_price.faults.plan import FaultPlan
from udp_price.server.core import QuoteServer
from udp_price.wire import QuoteReply, QuoteRequest, Status, decode_request, encode_reply, seal
from wire_format import AUTH_TRAILER_SIZE, CRC_SIZE

KEY = Key(11, bytes(range(100, 132)))
ATTACKER = Key(11, bytes(range(32)))  # the right key id, a secret the attacker made up
PRICES = expected_prices()
FAST_FAIL = RetryPolicy(max_attempts=3, deadline_s=1.0, initial_timeout_s=0.1)


@pytest.fixture
def keyed() -> Iterator[RunningServer]:
    auth = ServerAuth({KEY.key_id: KEY}, wall_offset_s=time.time() - time.monotonic())
    with serving(QuoteServer(load_catalog(CATALOG), auth=auth)) as running:
        yield running


@pytest.mark.parametrize("name", list(COMPLETE))
def test_fault_matrix_with_keys_on(name: str, keyed: RunningServer) -> None:
    report = asyncio.run(run_scenario(name, keyed.address, COMPLETE[name], policy=PATIENT, key=KEY))
    assert report.wrong == 0, report.problems[:5]
    assert report.completed == report.sent, report.line()
    assert report.mean_attempts < 1.5 * ATTEMPTS[name], report.line()
    check_server_matches_proxy(report, keyed)
    stats = keyed.core.stats
    assert stats["auth.verified"] >= report.sent
    if "corruption" not in name:  # (corruption may re-seal a flipped bit: then the tag or the flag catches it)
        assert stats["auth.dropped.anonymous"] == 0 and stats["auth.dropped.bad_tag"] == 0


def test_spoofed_unsigned_replies_with_wrong_totals_are_ignored_with_keys(keyed: RunningServer) -> None:
    forger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    forger.bind(("127.0.0.1", 0))
    forged = 0

    async def forge(proxy: object, client: QuoteClient) -> None:
        nonlocal forged
        assert client._transport is not None
        target = client._transport.get_extra_info("sockname")
        for _ in range(200):
            for req in client.session.outstanding():
                assert isinstance(req, QuoteRequest)
                fake = QuoteReply(req.request_id, Status.OK, req.item, req.quantity, 1, 1, 0, transmission=1)
                forger.sendto(encode_reply(fake), target)
                forger.sendto(sign(encode_reply(fake), ATTACKER, int(time.time() * 1000)), target)
                forged += 2
            await asyncio.sleep(0.005)

    with forger:
        report = asyncio.run(
            run_scenario("forged", keyed.address, FaultPlan.both(seed=15, drop=0.2), 300, 16, None, 0.003, forge, KEY)
        )
    assert forged > 100
    assert report.wrong == 0 and report.completed == report.sent, report.problems[:3]


# ------------------------------------------------------------------ an on-path fake server


def _plain(signed_request: bytes) -> bytes:
    body = bytearray(signed_request[: -CRC_SIZE - AUTH_TRAILER_SIZE])
    body[3] &= 0x7F
    return seal(bytes(body))


def wrong_price_unsigned(data: bytes) -> list[bytes]:
    req = decode_request(_plain(data))
    return [encode_reply(QuoteReply(req.request_id, Status.OK, req.item, req.quantity, 1, req.quantity, 1, 0, 1))]


def wrong_price_signed_with_a_guessed_key(data: bytes) -> list[bytes]:
    return [sign(r, ATTACKER, int(time.time() * 1000)) for r in wrong_price_unsigned(data)]


def genuine_reply_with_the_total_changed(upstream: tuple[str, int]) -> Callable[[bytes], list[bytes]]:
    """A relay that asks the real server and changes the total in its signed reply (CRC fixed up)."""
    return genuine_reply_with_byte_changed(upstream, 63, 0x01)  # the low byte of the total


def genuine_reply_with_byte_changed(upstream: tuple[str, int], at: int, xor: int) -> Callable[[bytes], list[bytes]]:
    """A relay that asks the real server and flips bits of one byte of its signed reply (CRC fixed up)."""

    def relay(data: bytes) -> list[bytes]:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            s.sendto(data, upstream)
            reply = bytearray(s.recv(2048))
        reply[at] ^= xor
        return [seal(bytes(reply[:-CRC_SIZE]))]

    return relay


@pytest.fixture
def fake_server() -> Iterator[Callable[[Callable[[bytes], list[bytes]]], tuple[str, int]]]:
    """Starts a fake server (thread) answering each datagram with what ``answer`` makes of it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.05)
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start(answer: Callable[[bytes], list[bytes]]) -> tuple[str, int]:
        def run() -> None:
            while not stop.is_set():
                try:
                    data, addr = sock.recvfrom(2048)
                except TimeoutError:
                    continue
                for out in answer(data):
                    sock.sendto(out, addr)

        threads.append(threading.Thread(target=run, daemon=True))
        threads[-1].start()
        host, port = sock.getsockname()[:2]
        return str(host), int(port)

    yield start
    stop.set()
    for thread in threads:
        thread.join(timeout=5)
        assert not thread.is_alive()
    sock.close()


@pytest.mark.parametrize(
    "mode", ["unsigned", "guessed key", "tampered genuine reply", "genuine reply marked OVERLOADED"]
)
def test_on_path_fake_server_with_a_wrong_price_is_never_accepted(
    mode: str, keyed: RunningServer, fake_server: Callable[[Callable[[bytes], list[bytes]]], tuple[str, int]]
) -> None:
    answer = {
        "unsigned": wrong_price_unsigned,
        "guessed key": wrong_price_signed_with_a_guessed_key,
        "tampered genuine reply": genuine_reply_with_the_total_changed(keyed.address),
        # the OVERLOADED bit (0x40 of the kind byte) set on the path: the tag covers it too
        "genuine reply marked OVERLOADED": genuine_reply_with_byte_changed(keyed.address, 3, 0x40),
    }[mode]
    fake = fake_server(answer)

    async def run() -> tuple[NoAnswer, dict[str, int]]:
        async with QuoteClient(fake, FAST_FAIL, key=KEY) as client:
            with pytest.raises(NoAnswer) as failure:
                await client.quote("apple", 3)
            return failure.value, dict(client.stats)

    failure, stats = asyncio.run(run())
    rejected = {k: v for k, v in stats.items() if k.startswith("auth.rejected.")}
    assert sum(rejected.values()) >= 1 and "accepted" not in stats, stats
    assert "no authenticated reply with key id 11" in str(failure) and "refused" in str(failure)
    if mode.startswith(("tampered", "genuine")):
        assert rejected == {"auth.rejected.bad_tag": failure.attempts}
        assert keyed.core.stats["auth.verified"] == failure.attempts


# ------------------------------------------------------------------ command lines


def key_file(tmp_path: Path, key: Key, name: str = "client.key", mode: int = 0o600) -> str:
    path = tmp_path / name
    path.write_text(new_key_line(key.key_id, key.secret) + "\n")
    path.chmod(mode)
    return str(path)


def client(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "udp_client.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONIOENCODING": "utf-8", **(env or {})},
    )


def wait_stderr(proc: subprocess.Popen[str], marker: str, timeout_s: float = 10.0) -> str:
    """Stderr lines until one holds ``marker`` (bounded by ``timeout_s``)."""
    assert proc.stderr is not None
    deadline, seen = time.monotonic() + timeout_s, []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], max(0.0, deadline - time.monotonic()))
        if ready:
            line = proc.stderr.readline()
            seen.append(line)
            if marker in line:
                return line
    raise AssertionError(f"no {marker!r} on stderr within {timeout_s} s: {seen}")


def test_cli_keys_rotation_wrong_key_and_env(tmp_path: Path) -> None:
    old, new, stranger = Key(1, b"1" * 32), Key(2, b"2" * 32), Key(3, b"3" * 32)
    keys = tmp_path / "keys.txt"
    keys.write_text(new_key_line(1, old.secret) + "\n" + new_key_line(2, new.secret) + "\n")
    keys.chmod(0o600)
    proc, server = start_server("--catalog", str(CATALOG), "--keys", str(keys), "--rate", "0")
    where = ["--server", f"{server[0]}:{server[1]}", "--deadline", "1", "--timeout", "0.2"]
    try:
        for key in (old, new):  # during the rotation both keys are valid
            r = client(*where, "quote", "apple", "3", "--key-file", key_file(tmp_path, key, f"{key.key_id}.key"))
            assert (r.returncode, r.stdout) == (0, "3 x apple @ 0.50 = 1.50\n"), r.stderr
        r = client(*where, "quote", "apple", "3", env={"UDP_PRICE_KEY_FILE": str(tmp_path / "2.key")})
        assert r.returncode == 0, r.stderr
        r = client(*where, "quote", "apple", "3", "--key-file", key_file(tmp_path, stranger))
        assert r.returncode == 3 and "no authenticated reply with key id 3" in r.stderr, r.stderr
        r = client(*where, "quote", "apple", "3")
        assert r.returncode == 3 and r.stdout == "", "an unsigned request gets no answer"
        keys.write_text(new_key_line(2, new.secret) + "\n")  # the rotation is over
        proc.send_signal(signal.SIGHUP)
        assert "keys reloaded: 1 key(s), ids 2" in wait_stderr(proc, "keys reloaded")
        r = client(*where, "quote", "apple", "3", "--key-file", str(tmp_path / "1.key"))
        assert r.returncode == 3 and "key id 1" in r.stderr, r.stderr
        r = client(*where, "quote", "apple", "3", "--key-file", str(tmp_path / "2.key"))
        assert r.returncode == 0, r.stderr
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    assert "auth.dropped.unknown_key=" in out and "auth.dropped.anonymous=" in out, out + err


def test_cli_bulk_with_keys(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(new_key_line(KEY.key_id, KEY.secret) + "\n")
    keys.chmod(0o600)
    orders = tmp_path / "orders.csv"
    with orders.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(
            [("item", "quantity"), *((item, i % 7 + 1) for i, item in enumerate(sorted(PRICES) * 20))]
        )
    proc, server = start_server("--catalog", str(CATALOG), "--keys", str(keys), "--rate", "0")
    try:
        r = client(
            "--server", f"{server[0]}:{server[1]}", "bulk", str(orders), "--format", "jsonl", "--key-file", str(keys)
        )  # fmt: skip
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert r.returncode == 0 and len(records) == 20 * len(PRICES), r.stderr
    for rec in records:
        cents = PRICES[rec["item"]] * int(rec["quantity"])
        assert (rec["status"], rec["total"]) == ("OK", f"{cents // 100}.{cents % 100:02d}")


def test_keyed_client_meets_a_server_without_keys(tmp_path: Path, keyed: RunningServer) -> None:
    proc, server = start_server("--catalog", str(CATALOG))
    try:
        r = client(
            "--server", f"{server[0]}:{server[1]}", "--deadline", "1", "--timeout", "0.2", "quote", "apple", "3",
            "--key-file", key_file(tmp_path, KEY),
        )  # fmt: skip
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert r.returncode == 3 and r.stdout == ""
    assert "no authenticated reply with key id 11" in r.stderr and "may run without --keys" in r.stderr
    assert "auth.dropped.no_keys=" in out and " replies=" not in out, "never answered unsigned (no downgrade)"


@pytest.mark.parametrize(
    ("mode", "text", "message"),
    [
        (0o644, None, "permissions 0644 for"),
        (0o600, "7 c2hvcnQ=\n", "the secret is 5 bytes; it must be 16 to 64"),
        (0o600, "seven AAAAAAAAAAAAAAAAAAAAAA==\n", "key id 'seven' is not a whole number"),
    ],
)
def test_bad_key_files_are_refused_with_one_line(tmp_path: Path, mode: int, text: str | None, message: str) -> None:
    path = Path(key_file(tmp_path, KEY, mode=mode))
    if text is not None:
        path.write_text(text)
    r = client("quote", "apple", "1", "--key-file", str(path))
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    r = run_cli("udp_server.py", "--port", "0", "--keys", str(path))
    assert r.returncode == 6 and message in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr


def test_new_key_prints_a_usable_line() -> None:
    r = run_cli("udp_server.py", "--new-key", "42")
    key_id, secret = r.stdout.split()
    assert r.returncode == 0 and key_id == "42" and len(secret) == 44  # 32 bytes of base64
    assert run_cli("udp_server.py", "--new-key", "42").stdout != r.stdout


def test_allow_anonymous_needs_keys() -> None:
    r = run_cli("udp_server.py", "--port", "0", "--allow-anonymous")
    assert r.returncode == 2 and "--allow-anonymous needs --keys" in r.stderr


def test_allow_anonymous_serves_both_kinds_of_client(tmp_path: Path) -> None:
    keys = Path(key_file(tmp_path, KEY, "keys.txt"))
    proc, server = start_server("--catalog", str(CATALOG), "--keys", str(keys), "--allow-anonymous")
    where = ["--server", f"{server[0]}:{server[1]}", "--deadline", "2"]
    try:
        signed = client(*where, "quote", "apple", "3", "--key-file", str(keys))
        unsigned = client(*where, "quote", "apple", "3")
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert signed.returncode == unsigned.returncode == 0, signed.stderr + unsigned.stderr
    assert signed.stdout == unsigned.stdout == "3 x apple @ 0.50 = 1.50\n"
    assert "auth.verified=1 " in out and "status.OK=2" in out, out


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--key-file", ""], {}, "--key-file is set but empty"),
        ([], {"UDP_PRICE_KEY_FILE": ""}, "UDP_PRICE_KEY_FILE is set but empty"),
        ([], {"UDP_PRICE_KEY_FILE": "  "}, "UDP_PRICE_KEY_FILE is set but empty"),
    ],
)
def test_an_empty_key_file_setting_is_refused_never_unsigned(
    args: list[str], env: dict[str, str], message: str
) -> None:
    """A secret that failed to render (UDP_PRICE_KEY_FILE="") must not quietly send unsigned requests."""
    r = client("--server", "127.0.0.1:9", "quote", "apple", "1", *args, env=env)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
