"""udp_price.faults.pcap (the pcapng writer) read back with an independent reader, and
fault_proxy --pcap's errors: a full disk at start, a file that stops growing while relaying."""

from __future__ import annotations

import asyncio
import io
import json
import random
import resource
import signal
import socket
import struct
import subprocess
import sys
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest
from helpers import CATALOG, ROOT, run_cli, start_server
from pcapng_reader import read_pcapng, udp_payload

from udp_price.faults import pcap as pcap_module
from udp_price.faults.pcap import PcapWriter, ProxyCapture, changed_bytes, fault_story, ip_udp_packet
from udp_price.faults.plan import Decision, FaultPlan, Faults
from udp_price.faults.relay import FaultProxy


def ones_complement_sum(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def test_packets_read_back_with_time_direction_and_comment(tmp_path: Path) -> None:
    path = tmp_path / "c.pcapng"
    with path.open("wb") as out:
        writer = PcapWriter(out)
        writer.packet(
            1795782251.777778, ("127.0.0.1", 5000), ("127.0.0.1", 9999), b"abc", "up #0 flow 0 received: x", True
        )
        writer.packet(2.5, ("::1", 9999), ("::1", 5000), b"hello", "down #0 flow 0 sent: forwarded", False)
    first, second = read_pcapng(path)
    assert (first.timestamp_us, first.inbound, first.comment) == (1795782251777778, True, "up #0 flow 0 received: x")
    assert (second.timestamp_us, second.inbound, second.flags) == (2_500_000, False, 2)
    assert second.comment == "down #0 flow 0 sent: forwarded"
    assert udp_payload(first.packet) == b"abc" and udp_payload(second.packet) == b"hello"
    assert writer.packets == 2 and writer.error is None


def test_ipv4_and_ipv6_headers_carry_ports_and_valid_checksums() -> None:
    v4 = ip_udp_packet(("10.0.0.1", 1234), ("10.0.0.2", 9999), b"payload!!")
    assert v4[0] == 0x45 and struct.unpack("!H", v4[2:4])[0] == len(v4) and v4[9] == 17
    assert ones_complement_sum(v4[:20]) == 0xFFFF  # header checksum verifies (RFC 1071)
    assert struct.unpack("!HHH", v4[20:26]) == (1234, 9999, 8 + 9)
    pseudo = v4[12:20] + struct.pack("!BBH", 0, 17, 17)
    assert ones_complement_sum(pseudo + v4[20:]) == 0xFFFF
    v6 = ip_udp_packet(("::1", 5), ("fe80::1%lo", 6), b"odd")
    assert v6[0] >> 4 == 6 and v6[6] == 17 and struct.unpack("!H", v6[4:6])[0] == 11
    pseudo6 = v6[8:40] + struct.pack("!I3xB", 11, 17)
    assert ones_complement_sum(pseudo6 + v6[40:]) == 0xFFFF
    mixed = ip_udp_packet(("127.0.0.1", 5), ("::1", 6), b"")
    assert mixed[0] >> 4 == 6 and mixed[8:24] == bytes(10) + b"\xff\xff\x7f\x00\x00\x01"


@pytest.mark.parametrize(
    ("decision", "sent", "story"),
    [
        (Decision("drop:random"), b"", "dropped (random)"),
        (Decision("deliver", 1), b"abcdef", "forwarded"),
        (Decision("deliver", 2), b"abcdef", "duplicated (2 copies)"),
        (Decision("deliver", 1, 0.1205), b"abcdef", "delayed by 120.500 ms"),
        (Decision("deliver", 1), b"abXdeY", "corrupted at bytes 2, 5"),
        (Decision("deliver", 1), b"aXcdef", "corrupted at byte 1"),
        (Decision("deliver", 1), b"abc", "truncated to 3 of 6 bytes"),
        (Decision("deliver", 2, 0.1), b"abcdeZ", "corrupted at byte 5, duplicated (2 copies), delayed by 100.000 ms"),
    ],
)
def test_fault_story_says_what_happened(decision: Decision, sent: bytes, story: str) -> None:
    assert fault_story(replace(decision, payload=sent), b"abcdef") == story


class FullDisk(io.RawIOBase):
    """Takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, room: int) -> None:
        self.room = room

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if len(data) > self.room:
            raise OSError(28, "No space left on device")
        self.room -= len(data)
        return len(data)


def test_a_write_error_stops_the_capture_once_and_says_so() -> None:
    writer = PcapWriter(FullDisk(320))  # type: ignore[arg-type]
    errors: list[BaseException] = []
    capture = ProxyCapture(writer, 0.0, on_error=errors.append)
    hop = (("127.0.0.1", 1), ("127.0.0.1", 2))
    for i in range(5):
        capture.received(float(i), hop, f"up #{i} flow 0", bytes(76), "forwarded")
    assert writer.packets == 1 and writer.out is None
    assert len(errors) == 1 and isinstance(errors[0], OSError) and errors[0].errno == 28


def test_pcap_on_a_full_disk_is_refused_at_start() -> None:
    done = run_cli("fault_proxy.py", "--upstream", "127.0.0.1:9", "--listen", "127.0.0.1:0", "--pcap", "/dev/full")
    assert done.returncode == 2
    assert done.stderr == "fault_proxy: cannot write capture /dev/full: No space left on device\n"
    missing = run_cli("fault_proxy.py", "--upstream", "127.0.0.1:9", "--pcap", "/nonexistent/dir/x.pcapng")
    assert missing.returncode == 2
    assert missing.stderr == "fault_proxy: cannot open capture /nonexistent/dir/x.pcapng: No such file or directory\n"


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead


def test_a_capture_that_stops_growing_keeps_the_proxy_relaying(tmp_path: Path) -> None:
    """The file may hold 4 KiB: the capture stops there (one stderr line), every quote still gets
    its answer, and the exit code says the capture is incomplete (4)."""
    server, address = start_server("--catalog", str(CATALOG))
    pcap = tmp_path / "small.pcapng"
    args = [
        "fault_proxy.py",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        f"{address[0]}:{address[1]}",
        "--pcap",
        str(pcap),
    ]
    proxy = subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=_limit_file_size,
    )  # fmt: skip
    try:
        assert proxy.stdout is not None
        at = proxy.stdout.readline().split()[1]
        answers = [run_cli("udp_client.py", "quote", "apple", str(n), "--server", at, "--json") for n in range(1, 41)]
        proxy.send_signal(signal.SIGTERM)
        out, err = proxy.communicate(timeout=30)
    finally:
        if proxy.poll() is None:
            proxy.kill()
        server.terminate()
        server.communicate(timeout=30)
    assert [json.loads(a.stdout)["total"] for a in answers] == [str(n * Decimal("0.50")) for n in range(1, 41)]
    assert proxy.returncode == 4
    assert err.splitlines() == ["fault_proxy: capture stopped (File too large); still relaying"]
    assert "up.sent=40" in out and "down.sent=40" in out
    assert pcap.stat().st_size <= 4096


# --- the capture's cost and truth ----------------------------------------------------------------


def test_an_unchanged_datagram_is_never_compared_byte_by_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-datagram work must not be a Python loop over the payload: an unchanged (or only
    truncated) datagram is told apart by one C comparison, offsets are searched only in changed ones.
    (--pcap once slowed the proxy 4-8x under load by comparing every payload in a Python loop.)"""

    def refuse(before: bytes, after: bytes) -> list[int]:
        raise AssertionError("changed_bytes called for an unchanged datagram")

    monkeypatch.setattr(pcap_module, "changed_bytes", refuse)
    big = bytes(range(256)) * 250
    assert fault_story(Decision("deliver", 1, payload=big), big) == "forwarded"
    assert fault_story(Decision("deliver", 2, payload=big[:100]), big) == (
        "truncated to 100 of 64000 bytes, duplicated (2 copies)"
    )


def test_changed_offsets_are_exact_and_a_long_list_is_cut() -> None:
    rng = random.Random(18)
    before = rng.randbytes(65000)
    for offsets in ([0], [64999], [1, 2, 30000, 64998], sorted(rng.sample(range(65000), 40))):
        after = bytearray(before)
        for i in offsets:
            after[i] ^= 1 + rng.randrange(255)
        assert changed_bytes(before, bytes(after)) == offsets
        assert changed_bytes(before, bytes(after[:-7])) == [i for i in offsets if i < 64993]
    assert changed_bytes(before, before) == []
    story = fault_story(Decision("deliver", 1, payload=bytes(40)), bytes(range(1, 41)))
    assert story == "corrupted at bytes " + ", ".join(map(str, range(16))) + ", ... (40 bytes in all)"


def test_checksums_match_the_word_by_word_sum() -> None:
    rng = random.Random(7)
    payloads = [b"", bytes(9), b"\xff" * 10, b"\xff\xff\x00\x01"] + [
        rng.randbytes(rng.randrange(1, 3000)) for _ in range(50)
    ]
    for payload in payloads:
        for source, destination in ((("10.1.2.3", 5), ("127.0.0.1", 6)), (("::1", 5), ("fe80::1", 6))):
            packet = ip_udp_packet(source, destination, payload)
            if packet[0] >> 4 == 4:
                assert ones_complement_sum(packet[:20]) == 0xFFFF
                pseudo = packet[12:20] + struct.pack("!BBH", 0, 17, len(packet) - 20)
                assert ones_complement_sum(pseudo + packet[20:]) == 0xFFFF
            else:
                pseudo = packet[8:40] + struct.pack("!I3xB", len(packet) - 40, 17)
                assert ones_complement_sum(pseudo + packet[40:]) == 0xFFFF


class CountingFlushes(io.BytesIO):
    flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def test_the_capture_is_flushed_about_once_a_second_not_per_packet() -> None:
    out = CountingFlushes()
    capture = ProxyCapture(PcapWriter(out), 0.0)
    hop = (("127.0.0.1", 1), ("127.0.0.1", 2))
    for i in range(30):
        capture.received(i * 0.1, hop, f"up #{i} flow 0", bytes(76), "forwarded")  # 0.0 .. 2.9 s
    assert out.flushes == 3  # at 0.0, 1.0 and 2.0 s: a reader is at most a second behind


def _sink() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s


async def _until(condition: object, what: str) -> None:
    for _ in range(500):  # bounded: 5 s
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def _captured(tmp_path: Path, plan: FaultPlan, upstream: tuple[str, int], sends: int, **kw: object) -> list[str]:
    """Comments of a capture of ``sends`` datagrams relayed in-process, the proxy stopped once each
    was received; kw: FaultProxy's."""
    path = tmp_path / "story.pcapng"

    async def run() -> None:
        with path.open("wb") as out:
            capture = ProxyCapture(PcapWriter(out), 0.0)
            proxy = FaultProxy(plan, upstream, listen=kw.pop("listen", ("127.0.0.1", 0)), capture=capture, **kw)  # type: ignore[arg-type]
            async with proxy:
                client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                for i in range(sends):
                    client.sendto(bytes([i]) * 600, ("127.0.0.1", proxy.address[1]))
                await _until(lambda: proxy.stats["up.received"] == sends, "every datagram received")
                client.close()
            capture.writer.flush()

    asyncio.run(run())
    return [p.comment for p in read_pcapng(path)]


def test_held_full_drops_and_datagrams_discarded_at_stop_are_recorded_as_such(tmp_path: Path) -> None:
    """A 60 s delay with room for one held datagram: the first is held (and discarded when the
    proxy stops), the other two are tail-dropped (held_full): the capture says exactly that."""
    with _sink() as upstream:
        plan = FaultPlan(up=Faults(delay_s=60.0))
        comments = _captured(tmp_path, plan, upstream.getsockname(), 3, max_held=1)
    assert comments == [
        "up #0 flow 0 received: delayed by 60000.000 ms",
        "up #1 flow 0 received: dropped (held_full: the hold budget for delayed datagrams is full)",
        "up #2 flow 0 received: dropped (held_full: the hold budget for delayed datagrams is full)",
        "up #0 flow 0 NOT SENT: discarded, the proxy stopped first",
    ]
    assert [p.flags & 3 for p in read_pcapng(tmp_path / "story.pcapng")] == [1, 1, 1, 0]


def test_a_send_error_is_recorded_as_not_sent(tmp_path: Path) -> None:
    """Upstream port closed: loopback answers the first datagram with ICMP port unreachable at once,
    so the next send on the flow's connected socket fails (ECONNREFUSED) in the same read batch."""
    with _sink() as gone:
        dead = gone.getsockname()
    comments = _captured(tmp_path, FaultPlan(), dead, 2)
    assert comments[:3] == [
        "up #0 flow 0 received: forwarded",
        "up #0 flow 0 sent: forwarded",
        "up #1 flow 0 received: forwarded",
    ]
    assert comments[3] == "up #1 flow 0 NOT SENT: send error (Connection refused)"


def test_a_wildcard_listener_records_the_address_the_client_sent_to(tmp_path: Path) -> None:
    with _sink() as upstream:
        _captured(tmp_path, FaultPlan(), upstream.getsockname(), 1, listen=("0.0.0.0", 0))
    received = read_pcapng(tmp_path / "story.pcapng")[0].packet
    assert socket.inet_ntoa(received[16:20]) == "127.0.0.1"  # not 0.0.0.0


def test_pcap_and_log_in_one_file_are_refused(tmp_path: Path) -> None:
    same = tmp_path / "both"
    for log in (str(same), str(tmp_path / "." / "both")):
        done = run_cli("fault_proxy.py", "--upstream", "127.0.0.1:9", "--pcap", str(same), "--log", log)
        assert done.returncode == 2
        assert done.stderr == f"fault_proxy: --pcap and --log are the same file ({same}); give each its own\n"
