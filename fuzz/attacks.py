"""Try known attacks on udp-price servers started from the CLI, and print what each achieved.

    python fuzz/attacks.py            # as root the spoofing attacks run too

Each attack reports the bytes the attacker sent, the bytes the servers sent because of them
(to the attacker, a spoofed victim, or each other; counted by the servers), the datagrams the
servers received beyond the attacker's own over a 3 s window (a loop keeps this growing), and
whether every server still answered a quote afterwards. tests/test_attacks.py runs the same
functions and asserts the promises: out/in <= 1.0, no traffic of their own, alive afterwards.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from spoof import forge_crc, raw_socket, reseal, send_spoofed

from udp_price.address import Address
from udp_price.wire import (
    BatchRequest,
    ListRequest,
    QuoteReply,
    QuoteRequest,
    Status,
    encode_batch_request,
    encode_list_request,
    encode_reply,
    encode_request,
)
from wire_format import VERSION

ROOT = Path(__file__).resolve().parent.parent

WINDOW_S = 3.0
"""How long traffic is counted after an attack: a loop would keep it growing all along."""
PROBE_DEADLINE_S = 30.0
"""How long a liveness probe keeps asking: a dead server never answers, a live one on a machine
loaded by other work may take seconds to be scheduled."""
PROBE_MAX_RESEND_S = 4.0
"""The probe resends after 1, 2, 4, 4... s: a doubling timer with a ceiling (RFC 6298's RTO backoff)."""
REFLECTOR_PORTS = (0, 7, 13, 17, 19, 37, 53, 123, 161, 1900, 11211)


@dataclass
class Result:
    attack: str
    sent_bytes: int
    out_bytes: int
    extra_datagrams: int
    """Datagrams the servers received beyond those the attacker sent, over the window: at most the
    one answer a spoofed request earns (a loop would make it thousands)."""
    alive: bool
    detail: str = ""

    @property
    def ratio(self) -> float:
        return self.out_bytes / self.sent_bytes if self.sent_bytes else 0.0


class Server:
    """udp_server.py on 127.0.0.1:<free port>; probes are counted so they can be taken out."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "udp_server.py"), "--port", "0", *args],
            cwd=ROOT,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line!r}")
        host, _, port = line.split("listening on ")[1].split()[0].rpartition(":")
        self.address: Address = (host, int(port))
        self.probes = 0
        self.stderr = ""

    def probe(
        self, sock: socket.socket | None = None, deadline_s: float = PROBE_DEADLINE_S
    ) -> tuple[bool, list[bytes]]:
        """Ask for a quote as a client would: resend the same request on a doubling timer (1, 2,
        4, 4... s) until answered or ``deadline_s`` passes, then wait for the answers to every copy
        sent, so the server's counters hold exactly the probe traffic ``stop`` takes out. The server
        handles datagrams in order, so once the answer is here, whatever it sent to ``sock`` for
        earlier datagrams is here too: returns (answered, those other datagrams)."""
        s = sock or socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        request = encode_request(QuoteRequest(secrets.randbits(64), "apple", 1))
        next_send = time.monotonic()
        deadline = next_send + deadline_s
        sent = answers = 0
        others: list[bytes] = []
        try:
            while time.monotonic() < deadline and (answers == 0 or answers < sent):
                if answers == 0 and time.monotonic() >= next_send:
                    s.sendto(request, self.address)
                    self.probes += 1
                    sent += 1
                    next_send = time.monotonic() + min(PROBE_MAX_RESEND_S, 2.0 ** (sent - 1))
                data = _recv_before(s, min(deadline, next_send) if answers == 0 else deadline)
                if data is None:
                    continue
                if data[4:12] == request[4:12]:
                    answers += 1
                else:
                    others.append(data)
            return answers > 0, others
        finally:
            s.settimeout(None)
            if sock is None:
                s.close()

    def stop(self) -> dict[str, int]:
        """SIGTERM; the final counters, without the probes (each 76 bytes in, 76 out)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, self.stderr = self.proc.communicate(timeout=10)
        last = [line for line in out.splitlines() if "stopped;" in line][-1]
        counters = {k: int(v) for k, v in (kv.split("=", 1) for kv in last.split("stopped; ", 1)[1].split())}
        for key, per_probe in (("requests", 1), ("replies", 1), ("bytes_received", 76), ("bytes_sent", 76)):
            counters[key] = counters.get(key, 0) - per_probe * self.probes
        return counters


def _recv_before(s: socket.socket, until: float) -> bytes | None:
    """One datagram from ``s`` before the monotonic time ``until``, or None."""
    s.settimeout(max(0.001, until - time.monotonic()))
    try:
        return s.recv(65535)
    except TimeoutError:
        return None


def udp_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s


def run(name: str, attack: Callable[[list[Server]], tuple[int, str]], n: int = 1) -> Result:
    """Start ``n`` servers, run ``attack`` (returns datagrams and bytes it sent... as (count, detail)),
    count for WINDOW_S, probe every server, stop them and total their counters."""
    group = [Server() for _ in range(n)]
    try:
        sent_datagrams, detail = attack(group)
        time.sleep(WINDOW_S)  # the observation window itself, not a wait for a condition
        alive = all(s.probe()[0] for s in group)
        counters = [s.stop() for s in group]
    finally:
        for s in group:
            if s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait()
    received = sum(c["requests"] for c in counters)
    out = sum(c["bytes_sent"] for c in counters)
    sent_bytes = sum(c["bytes_received"] for c in counters) - _server_to_server(counters, n)
    tracebacks = sum(s.stderr.count("Traceback") for s in group)
    return Result(
        name, sent_bytes, out, received - sent_datagrams, alive, f"{detail}; tracebacks {tracebacks}".lstrip("; ")
    )


def _server_to_server(counters: list[dict[str, int]], n: int) -> int:
    # With two servers, bytes one sent to the other were received too: not the attacker's bytes.
    return sum(c["bytes_sent"] for c in counters) if n > 1 else 0


# ---------------------------------------------------------------- the attacks


def cache_crc_collision(spoof: bool) -> Result:
    """A 56-byte batch with the id of a list request and a quantity chosen so that its CRC32
    equals the list request's, hoping for the cached list reply (to a victim)."""

    def attack(group: list[Server]) -> tuple[int, str]:
        server, victim = group[0], udp_socket()
        rid = secrets.randbits(64)
        listing = encode_list_request(ListRequest(rid, 0))
        batch = encode_batch_request(BatchRequest(rid, (("apple", 1),)))
        forged = reseal(forge_crc(batch[:-4], 16, int.from_bytes(listing[-4:], "big")))
        datagrams = [listing] + [forged] * 3
        if spoof:
            raw = raw_socket()
            for data in datagrams:
                send_spoofed(raw, victim.getsockname(), server.address, data)
            raw.close()
        else:
            for data in datagrams:
                victim.sendto(data, server.address)
        _, replies = server.probe(victim)
        victim.close()
        biggest = max((len(r) for r in replies[1:]), default=0)
        return len(datagrams), f"victim got {len(replies)} replies, largest to the 56-byte batch {biggest} bytes"

    return run(f"cache CRC32 collision{' to a spoofed victim' if spoof else ''}", attack)


def silent(name: str, datagrams: list[bytes]) -> Result:
    """Datagrams that must get no answer at all."""

    def attack(group: list[Server]) -> tuple[int, str]:
        sock = udp_socket()
        for data in datagrams:
            sock.sendto(data, group[0].address)
        _, replies = group[0].probe(sock)
        sock.close()
        return len(datagrams), f"{len(datagrams)} sent, {len(replies)} answered"

    return run(name, attack)


def sealed_replies() -> list[bytes]:
    """Intact replies of every kind, and intact datagrams of kinds no version defines."""
    rid = secrets.randbits(64)
    quote = encode_reply(QuoteReply(rid, Status.MALFORMED, "", 0))
    body = encode_request(QuoteRequest(rid, "apple", 1))[:-4]
    others = [reseal(body[:3] + bytes([kind]) + body[4:]) for kind in (0, 2, 4, 6, 7, 8, 255)]
    return [quote, *others]


def corrupted_version() -> list[bytes]:
    """Valid requests with the version byte flipped (so the CRC32 fails): must be noise, not 'v2'."""
    good = encode_request(QuoteRequest(secrets.randbits(64), "apple", 1))
    return [good[:2] + bytes([v]) + good[3:] for v in (0, 1, 2, 3, 9, 255) if v != VERSION]


def spoofed_loop(kind: str) -> Result:
    """One spoofed datagram to server A claiming to come from server B (or from A itself)."""

    def attack(group: list[Server]) -> tuple[int, str]:
        a, b = group
        rid = secrets.randbits(64)
        source = a.address if kind == "self" else b.address
        payload = {
            "reply": encode_reply(QuoteReply(rid, Status.MALFORMED, "", 0)),
            "malformed": reseal(encode_request(QuoteRequest(rid, "apple", 1))[:16] + b"a\0b" + bytes(29 + 24)),
            "other_version": reseal(b"QP\x02\x01" + rid.to_bytes(8, "big") + bytes(60)),
            "self": encode_request(QuoteRequest(rid, "apple", 1)),
        }[kind]
        raw = raw_socket()
        send_spoofed(raw, source, a.address, payload)
        raw.close()
        return 1, f"one datagram to A from {'A itself' if kind == 'self' else 'B'}"

    return run(f"spoofed {kind} datagram between two servers", attack, n=2)


def reflector_ports() -> Result:
    """Valid requests spoofed from port 0 and the ports of reflecting services."""

    def attack(group: list[Server]) -> tuple[int, str]:
        raw = raw_socket()
        for port in REFLECTOR_PORTS:
            send_spoofed(raw, ("127.0.0.1", port), group[0].address, encode_request(QuoteRequest(port, "apple", 1)))
        raw.close()
        return len(REFLECTOR_PORTS), f"from ports {','.join(map(str, REFLECTOR_PORTS))}"

    return run("requests from reflector source ports", attack)


def all_attacks(spoof: bool) -> list[Result]:
    results = [
        cache_crc_collision(spoof=False),
        silent("intact replies and unknown kinds", sealed_replies()),
        silent("version byte corrupted (CRC fails)", corrupted_version()),
    ]
    if spoof:
        results.append(cache_crc_collision(spoof=True))
        results += [spoofed_loop(kind) for kind in ("reply", "malformed", "other_version", "self")]
        results.append(reflector_ports())
    return results


def main() -> int:
    spoof = os.geteuid() == 0
    results = all_attacks(spoof)
    for r in results:
        print(
            f"{r.attack:48} in {r.sent_bytes:6,} B  out {r.out_bytes:6,} B  ratio {r.ratio:4.2f}  "
            f"extra datagrams in {WINDOW_S:g} s: {r.extra_datagrams}  alive: {r.alive}  ({r.detail})"
        )
    if not spoof:
        print("(not root: the spoofing attacks were skipped)")
    print(json.dumps([asdict(r) | {"ratio": round(r.ratio, 3)} for r in results]))
    ok = all(r.ratio <= 1.0 and r.extra_datagrams <= 1 and r.alive for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
