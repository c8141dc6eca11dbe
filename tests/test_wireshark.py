"""The Wireshark dissector (contrib/wireshark/udp_price.lua) and fault_proxy --pcap, checked with
tshark: the protocol doc's test vectors (plain and authenticated) dissect to the values the doc
states; demo-like traffic and a signed exchange captured through the proxy dissect to exactly what
the client, the server and the proxy reported; corrupted and truncated datagrams and authentication
trailers of the wrong length are flagged. See docs/testing.md (Wireshark)."""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import subprocess
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import pytest
from helpers import CATALOG, run_cli, spawn, start_server
from pcapng_reader import read_pcapng, udp_payload
from test_auth import doc_vectors as auth_vectors
from test_protocol_doc import EXPECTED, vectors
from tsharklib import Frame, dissect, seconds, tshark

from udp_price.auth import new_key_line
from udp_price.catalog import format_money
from udp_price.cli.demo import ORDERS
from udp_price.faults.pcap import PcapWriter
from udp_price.wire import (
    BatchReply,
    BatchRequest,
    ListReply,
    ListRequest,
    QuoteReply,
    QuoteRequest,
    Status,
    encode_list_request,
    encode_request,
)

CLIENT, SERVER = ("127.0.0.1", 40000), ("127.0.0.1", 9999)
"""The doc-vector capture uses the default port 9999 (the dissector's port registration)."""


def write_capture(path: Path, packets: list[tuple[float, tuple[str, int], tuple[str, int], bytes]]) -> None:
    with path.open("wb") as out:
        writer = PcapWriter(out)
        for t, src, dst, payload in packets:
            writer.packet(t, src, dst, payload, f"packet at {t}", True)
        assert writer.error is None


def expected_fields(message: object) -> tuple[dict[str, str], list[dict[str, str]]]:
    """The udp_price.* values the dissector must show for ``message``, and its lines or entries."""
    top: dict[str, str] = {"udp_price.request_id": f"0x{message.request_id:016x}"}  # type: ignore[attr-defined]
    subs: list[dict[str, str]] = []
    if isinstance(message, QuoteRequest):
        top.update({"udp_price.quantity": str(message.quantity), "udp_price.item": message.item})
        top["udp_price.transmission"] = str(message.transmission)
    elif isinstance(message, QuoteReply):
        top.update({"udp_price.status": str(int(message.status)), "udp_price.item": message.item})
        top.update({"udp_price.quantity": str(message.quantity), "udp_price.transmission": str(message.transmission)})
        top.update(
            {"udp_price.unit_price": format_money(message.unit_price), "udp_price.total": format_money(message.total)}
        )
        top.update(
            {"udp_price.total_cents": str(message.total), "udp_price.retry_after_ms": str(message.retry_after_ms)}
        )
        top["udp_price.catalog_version"] = f"0x{message.catalog_version:08x}"
    elif isinstance(message, BatchRequest):
        top.update({"udp_price.count": str(len(message.lines)), "udp_price.transmission": str(message.transmission)})
        subs = [{"udp_price.line.item": i, "udp_price.line.quantity": str(q)} for i, q in message.lines]
    elif isinstance(message, BatchReply):
        top.update({"udp_price.status": str(int(message.status)), "udp_price.count": str(len(message.results))})
        top.update({"udp_price.lines_digest": f"0x{message.lines_digest:08x}", "udp_price.transmission": "1"})
        top["udp_price.catalog_version"] = f"0x{message.catalog_version:08x}"
        subs = [
            {
                "udp_price.line.status": str(int(r.status)),
                "udp_price.line.unit_price": format_money(r.unit_price),
                "udp_price.line.total": format_money(r.total),
            }
            for r in message.results
        ]
    elif isinstance(message, ListRequest):
        top.update({"udp_price.page": str(message.page), "udp_price.prefix": message.prefix})
    elif isinstance(message, ListReply):
        top.update({"udp_price.status": str(int(message.status)), "udp_price.count": str(len(message.entries))})
        top.update({"udp_price.page": str(message.page), "udp_price.pages": str(message.pages)})
        top["udp_price.catalog_version"] = f"0x{message.catalog_version:08x}"
        subs = [{"udp_price.entry.item": i, "udp_price.entry.unit_price": format_money(p)} for i, p in message.entries]
    return top, subs


def assert_shows(frame: Frame, top: dict[str, str], subs: list[dict[str, str]]) -> None:
    shown = {name: frame.get(name) for name in top}
    assert shown == top
    assert [{name: sub[name][0] for name in want} for sub, want in zip(frame.subtrees, subs, strict=True)] == subs


@pytest.mark.parametrize("port", [SERVER[1], 47001], ids=["default-port", "heuristic"])
def test_doc_vectors_dissect_to_the_documented_values(tmp_path: Path, port: int) -> None:
    docs = vectors()
    names = sorted(docs)
    packets = []
    for i, name in enumerate(names):
        request = name.split("-")[1] == "request"
        ends = (CLIENT, ("127.0.0.1", port)) if request else (("127.0.0.1", port), CLIENT)
        packets.append((1000.0 + i, *ends, docs[name]))
    write_capture(tmp_path / "v.pcapng", packets)
    frames = dissect(tmp_path / "v.pcapng")
    assert len(frames) == len(names)
    for name, frame in zip(names, frames, strict=True):
        assert frame.get("udp_price.crc32.status") == "1", name
        assert frame.get("udp_price.magic") == "QP" and frame.get("udp_price.version") == "2"
        kind = docs[name][3]
        assert frame.get("udp_price.kind") == str(kind) and frame.get("udp_price.flags.auth") == "0"
        assert_shows(frame, *expected_fields(EXPECTED[name][0]))


def test_doc_quote_reply_reads_as_the_doc_says(tmp_path: Path) -> None:
    """The prose above the vector: OK, unit price 380 cents, total 760, version 0x11223344, tx 1."""
    write_capture(tmp_path / "r.pcapng", [(5.0, SERVER, CLIENT, vectors()["quote-reply"])])
    (frame,) = dissect(tmp_path / "r.pcapng")
    assert (frame.get("udp_price.status"), frame.get("udp_price.unit_price"), frame.get("udp_price.total")) == (
        "0",
        "3.80",
        "7.60",
    )
    assert frame.get("udp_price.item") == "café crème" and frame.get("udp_price.catalog_version") == "0x11223344"


def resealed(data: bytes, kind_byte: int | None = None, version: int | None = None) -> bytes:
    body = bytearray(data[:-4])
    if kind_byte is not None:
        body[3] = kind_byte
    if version is not None:
        body[2] = version
    return bytes(body) + zlib.crc32(body).to_bytes(4, "big")


def test_flags_version_one_unknown_kinds_and_bad_crc(tmp_path: Path) -> None:
    reply, request = vectors()["quote-reply"], vectors()["quote-request"]
    v1_request = resealed(request[:48] + bytes(24) + request[72:], version=1)
    corrupted = bytearray(reply)
    corrupted[60] ^= 0x10
    packets = [
        (1.0, SERVER, CLIENT, resealed(reply, kind_byte=0x42)),  # OVERLOADED
        (2.0, CLIENT, SERVER, resealed(request[:-4] + bytes(range(20)) + bytes(4), kind_byte=0x81)),  # AUTH
        (3.0, CLIENT, SERVER, v1_request),
        (4.0, CLIENT, SERVER, resealed(request, kind_byte=0x07)),
        (5.0, SERVER, CLIENT, bytes(corrupted)),
        (6.0, SERVER, CLIENT, reply[:10]),
        (7.0, CLIENT, SERVER, encode_request(QuoteRequest(1, "crème brûlée assortment box 2", 1, transmission=1))),
    ]
    write_capture(tmp_path / "f.pcapng", packets)
    overloaded, auth, v1, unknown, bad, short, full = dissect(tmp_path / "f.pcapng")
    assert (overloaded.get("udp_price.flags.overloaded"), overloaded.get("udp_price.kind")) == ("1", "2")
    assert overloaded.get("udp_price.flags.auth") == "0" and overloaded.get("udp_price.total") == "7.60"
    assert (auth.get("udp_price.flags.auth"), auth.get("udp_price.kind")) == ("1", "1")
    assert auth.get("udp_price.item") == "café crème" and auth.get("udp_price.crc32.status") == "1"
    assert auth.get("udp_price.auth_trailer") == ":".join(f"{i:02x}" for i in range(20))
    assert auth.has("udp_price.auth.bad_length") and not auth.has("udp_price.auth.key_id")  # 20 bytes, not 28
    assert (v1.get("udp_price.version"), v1.get("udp_price.item")) == ("1", "café crème")
    assert not v1.has("udp_price.transmission")
    assert unknown.has("udp_price.unknown") and not unknown.has("udp_price.item")
    assert bad.get("udp_price.crc32.status") == "0" and bad.has("udp_price.crc32.bad")
    assert bad.get("udp_price.crc32.calculated") == f"0x{zlib.crc32(corrupted[:-4]):08x}"
    assert bad.get("udp_price.crc32") == "0x9737e1bc"  # the stored one, from the doc
    assert short.has("udp_price.bad_length") and not short.has("udp_price.request_id")
    assert full.get("udp_price.item") == "crème brûlée assortment box 2"  # 32 bytes: no NUL ends it


def test_matching_response_times_retransmissions_and_duplicates(tmp_path: Path) -> None:
    """A scripted exchange at known times: tx 1 lost, tx 2 answered 0.25 s later, then a copy."""
    request = vectors()["quote-request"]
    reply = vectors()["quote-reply"]
    tx2 = resealed(request[:48] + b"\x02" + request[49:])
    reply2 = resealed(reply[:13] + b"\x02" + reply[14:])
    packets = [
        (10.0, CLIENT, SERVER, request),
        (11.0, CLIENT, SERVER, tx2),
        (11.0625, CLIENT, SERVER, tx2),  # a duplicate made by the network, not a retransmission
        (11.25, SERVER, CLIENT, reply2),
        (11.5, SERVER, CLIENT, reply2),
    ]
    write_capture(tmp_path / "m.pcapng", packets)
    first, second, copy, answer, late_copy = dissect(tmp_path / "m.pcapng")
    assert not first.has("udp_price.retransmission") and first.get("udp_price.attempt") == "1"
    assert not first.has("udp_price.response_in")
    assert second.get("udp_price.retransmission") == "1" and second.get("udp_price.attempt") == "2"
    assert second.get("udp_price.response_in") == "4"
    assert copy.get("udp_price.duplicate") == "1" and not copy.has("udp_price.retransmission")
    assert answer.get("udp_price.request_in") == "2" and seconds(answer.get("udp_price.time") or "") == Decimal("0.25")
    assert seconds(answer.get("udp_price.time_since_first") or "") == Decimal("1.25")
    assert not answer.has("udp_price.duplicate") and late_copy.get("udp_price.duplicate") == "1"


# --- captures from the proxy ------------------------------------------------------------------


@contextmanager
def proxy_with_capture(
    upstream: tuple[str, int], pcap: Path, *faults: str
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """fault_proxy.py --pcap in front of ``upstream``; yields it and its address."""
    args = ["fault_proxy.py", "--listen", "127.0.0.1:0", "--upstream", f"{upstream[0]}:{upstream[1]}"]
    proc, line = spawn([*args, "--pcap", str(pcap), *faults], "fault_proxy:")
    try:
        yield proc, line.split()[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def stop(proc: subprocess.Popen[str], sig: signal.Signals = signal.SIGTERM) -> tuple[int, str, str]:
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out, err


def summary_counters(stop_line: str) -> dict[str, int]:
    words = stop_line.split("seed=")[1].split()[1:]
    return {k: int(v) for k, v in (w.split("=") for w in words)}


def client_leg(frames: list[Frame], proxy_port: int) -> list[Frame]:
    return [f for f in frames if proxy_port in (f.src_port, f.dst_port)]


def requests_and_replies(frames: list[Frame], request_id: str) -> tuple[list[Frame], list[Frame]]:
    mine = [f for f in frames if f.get("udp_price.request_id") == f"0x{request_id}"]
    return [f for f in mine if int(f.get("udp_price.kind") or 0) % 2], [
        f for f in mine if not int(f.get("udp_price.kind") or 0) % 2
    ]


def check_quote_story(frames: list[Frame], by_number: dict[int, Frame], quoted: dict[str, object]) -> None:
    """The client leg of one quote: one request datagram per attempt the client counted, numbered
    1..attempts, all but the first marked retransmissions; the reply the client accepted (the first
    to reach it) carries exactly what the client printed, and its response time is the capture's."""
    requests, replies = requests_and_replies(frames, str(quoted["request_id"]))
    attempts = int(str(quoted["attempts"]))
    assert [r.get("udp_price.transmission") for r in requests] == [str(n) for n in range(1, attempts + 1)]
    assert [r.has("udp_price.retransmission") for r in requests] == [n > 1 for n in range(1, attempts + 1)]
    assert [r.get("udp_price.attempt") for r in requests] == [str(n) for n in range(1, attempts + 1)]
    accepted = next(r for r in replies if not r.inbound)  # proxy -> client
    assert accepted.get("udp_price.item") == quoted["item"]
    assert accepted.get("udp_price.quantity") == str(quoted["quantity"])
    assert Status(int(accepted.get("udp_price.status") or -1)).name == quoted["status"]
    assert int(accepted.get("udp_price.catalog_version") or "", 16) == quoted["catalog_version"]
    if quoted["status"] == "OK":
        assert (accepted.get("udp_price.unit_price"), accepted.get("udp_price.total")) == (
            quoted["unit_price"],
            quoted["total"],
        )
    answered = by_number[int(accepted.get("udp_price.request_in") or 0)]
    assert answered.get("udp_price.transmission") == accepted.get("udp_price.transmission")
    assert seconds(accepted.get("udp_price.time") or "") == accepted.time - answered.time
    since_first = seconds(accepted.get("udp_price.time_since_first") or "")
    assert since_first == accepted.time - requests[0].time
    # The proxy saw the first request after the client sent it and passed the reply on before the
    # client read it: its interval lies inside the client's (both from the monotonic clock, in us).
    story = [
        (f.number, f.inbound, f.get("udp_price.kind"), f.get("udp_price.transmission"), f.time, f.comment)
        for f in requests + replies
    ]
    assert since_first * 1000 <= Decimal(str(quoted["latency_ms"])) + Decimal("0.002"), (story, quoted)


def check_failed_story(frames: list[Frame], quoted: dict[str, object]) -> None:
    """A quote that got no answer: as many request datagrams as the client counted, no reply reached it."""
    mine = [f for f in frames if f.get("udp_price.item") == quoted["item"] and f.get("udp_price.kind") == "1"]
    assert len({f.get("udp_price.request_id") for f in mine}) == 1 and len(mine) == quoted["attempts"]
    _, replies = requests_and_replies(frames, (mine[0].get("udp_price.request_id") or "")[2:])
    assert not [r for r in replies if not r.inbound]


def check_listing(leg: list[Frame], listed: object) -> None:
    """``items --json`` printed the entries of the first reply to reach it for each page, in order
    (or failed explicitly)."""
    if isinstance(listed, dict):
        assert listed["status"] == "NO_ANSWER"
        return
    list_replies = [f for f in leg if f.get("udp_price.kind") == "6" and not f.inbound]
    first_per_page: dict[str, Frame] = {}
    for f in list_replies:
        first_per_page.setdefault(f.get("udp_price.page") or "", f)
    shown = [
        {"item": e["udp_price.entry.item"][0], "unit_price": e["udp_price.entry.unit_price"][0]}
        for page in sorted(first_per_page, key=int)
        for e in first_per_page[page].subtrees
    ]
    assert shown == listed


def check_batch(leg: list[Frame], rows: list[dict[str, object]]) -> None:
    """``bulk --json`` printed the lines of the first batch reply to reach it (or failed explicitly)."""
    if all(r["status"] == "NO_ANSWER" for r in rows):
        return
    (batch_reply, *_) = [f for f in leg if f.get("udp_price.kind") == "4" and not f.inbound]
    (batch_request, *_) = [f for f in leg if f.get("udp_price.kind") == "3"]
    assert [(s["udp_price.line.item"][0], s["udp_price.line.quantity"][0]) for s in batch_request.subtrees] == [
        (r["item"], r["quantity"]) for r in rows
    ]
    assert [
        (Status(int(s["udp_price.line.status"][0])).name, s["udp_price.line.total"][0]) for s in batch_reply.subtrees
    ] == [(r["status"], r["total"] or "0.00") for r in rows]


def test_demo_traffic_through_the_proxy_reads_as_the_client_server_and_proxy_logged(tmp_path: Path) -> None:
    tshark()
    server, address = start_server("--catalog", str(CATALOG), "--log-format", "json")
    pcap = tmp_path / "demo.pcapng"
    orders = tmp_path / "orders.csv"
    orders.write_text("item,quantity\napple,2\nkiwi,1\nespresso,3\n", encoding="utf-8")
    try:
        with proxy_with_capture(address, pcap, "--drop", "30%", "--duplicate-down", "20%", "--seed", "7") as (
            proxy,
            at,
        ):
            quotes = []
            for item, qty in [*ORDERS, ("kiwi", 1)]:
                done = run_cli("udp_client.py", "quote", item, str(qty), "--server", at, "--json")
                quotes.append(json.loads(done.stdout))
            listed = json.loads(run_cli("udp_client.py", "items", "--server", at, "--json").stdout)
            bulk = run_cli("udp_client.py", "bulk", str(orders), "--batch", "8", "--server", at, "--json")
            rows = [json.loads(line) for line in bulk.stdout.splitlines()]
            code, out, _ = stop(proxy)
    finally:
        _, server_out, _ = stop(server)
    assert code == 0
    proxy_port = int(at.rsplit(":", 1)[1])
    frames = dissect(pcap)
    by_number = {f.number: f for f in frames}
    assert all(f.get("udp_price.crc32.status") == "1" for f in frames)

    counters = summary_counters(out.strip().splitlines()[-1])
    assert sum(f.inbound for f in frames) == counters["up.received"] + counters["down.received"]
    assert sum(not f.inbound for f in frames) == counters["up.sent"] + counters["down.sent"]
    drops = sum(v for k, v in counters.items() if ".drop:" in k)
    assert sum("received: dropped" in f.comment for f in frames) == drops > 0
    assert sum("received: duplicated" in f.comment for f in frames) == counters.get("down.duplicate", 0) > 0

    served = json.loads(server_out.strip().splitlines()[-1])["counters"]
    server_leg = [f for f in frames if address[1] in (f.src_port, f.dst_port)]
    assert sum(f.dst_port == address[1] for f in server_leg) == served["requests"]
    assert sum(f.src_port == address[1] for f in server_leg) == served["replies"]

    leg = client_leg(frames, proxy_port)
    # 30% loss each way: a quote may fail explicitly (NO_ANSWER), never wrongly.
    assert any(q["attempts"] > 1 for q in quotes)
    for (item, _), quoted in zip([*ORDERS, ("kiwi", 1)], quotes, strict=True):
        if quoted["status"] == "NO_ANSWER":
            check_failed_story(leg, quoted)
        else:
            assert quoted["status"] == ("UNKNOWN_ITEM" if item == "kiwi" else "OK")
            check_quote_story(leg, by_number, quoted)

    check_listing(leg, listed)
    check_batch(leg, rows)


@pytest.mark.parametrize("fault", ["corrupt", "truncate"])
def test_corrupted_and_truncated_replies_are_flagged(tmp_path: Path, fault: str) -> None:
    tshark()
    server, address = start_server("--catalog", str(CATALOG))
    pcap = tmp_path / f"{fault}.pcapng"
    try:
        with proxy_with_capture(address, pcap, f"--{fault}-down", "100%", "--seed", "3") as (proxy, at):
            done = run_cli("udp_client.py", "quote", "apple", "1", "--server", at, "--retries", "2", "--json")
            code, _, _ = stop(proxy, signal.SIGINT)  # SIGINT flushes the capture as SIGTERM does
    finally:
        stop(server)
    assert code == 0 and json.loads(done.stdout)["status"] == "NO_ANSWER"
    # Off the default port a truncated datagram does not pass the heuristic (it needs a fitting
    # length): decoded as udp-price by port, as docs/testing.md says ("Decode As").
    ports = (at.rsplit(":", 1)[1], str(address[1]))
    frames = dissect(pcap, *(arg for port in ports for arg in ("-d", f"udp.port=={port},udp_price")))
    raw = read_pcapng(pcap)
    assert len(raw) == len(frames) == 12  # 3 requests and 3 replies, each received and sent
    received = {p.comment.split(" received: ")[0]: p for p in raw if p.inbound}
    damaged = [(f, p) for f, p in zip(frames, raw, strict=True) if not p.inbound and p.comment.startswith("down")]
    assert len(damaged) == 3
    for frame, packet in damaged:
        original = udp_payload(received[packet.comment.split(" sent: ")[0]].packet)
        sent = udp_payload(packet.packet)
        if fault == "corrupt":
            offsets = [i for i, (a, b) in enumerate(zip(original, sent, strict=True)) if a != b]
            assert packet.comment.endswith(
                f"corrupted at byte{'s' if len(offsets) > 1 else ''} {', '.join(map(str, offsets))}"
            )
            assert frame.get("udp_price.crc32.status") == "0" and frame.has("udp_price.crc32.bad")
        else:
            assert packet.comment.endswith(f"truncated to {len(sent)} of {len(original)} bytes")
            assert frame.get("udp_price.crc32.status") == "0" or frame.has("udp_price.bad_length")


def test_version_one_lists_dissect_on_the_port_and_by_heuristic(tmp_path: Path) -> None:
    """Version 1 lists had a u16 page and pages: a 666-byte request, replies of 26 + 40 N bytes."""
    rid = bytes.fromhex("0123456789abcdef")
    request = seal(b"QP\x01\x05" + rid + (3).to_bytes(2, "big") + bytes(666 - 18))
    entry = b"apple".ljust(32, b"\0") + (50).to_bytes(8, "big")
    reply = seal(b"QP\x01\x06" + rid + bytes([0, 1]) + bytes.fromhex("0003 0009 11223344") + entry)
    assert (len(request), len(reply)) == (666, 66)
    for port in (9999, 40001):
        server = ("127.0.0.1", port)
        write_capture(tmp_path / "v1.pcapng", [(1.0, CLIENT, server, request), (1.5, server, CLIENT, reply)])
        asked, answered = dissect(tmp_path / "v1.pcapng")
        assert asked.get("udp_price.page") == "3" and asked.get("udp_price.crc32.status") == "1"
        assert not asked.has("udp_price.bad_length")
        assert (answered.get("udp_price.page"), answered.get("udp_price.pages")) == ("3", "9")
        assert answered.get("udp_price.catalog_version") == "0x11223344"
        assert answered.subtrees == [
            {
                "udp_price.entry.item": ["apple"],
                "udp_price.entry.unit_price": ["0.50"],
                "udp_price.entry.unit_price_cents": ["50"],
            }
        ]
        assert answered.get("udp_price.request_in") == "1"


def seal(body: bytes) -> bytes:
    return body + zlib.crc32(body).to_bytes(4, "big")


def test_copies_of_unnumbered_requests_are_duplicates_and_kinds_are_apart(tmp_path: Path) -> None:
    """A list request (no transmission number) seen twice byte for byte is a copy, not a client
    retry; a quote with transmission 0 likewise; a quote sharing a listing's id is its own exchange."""
    listing = encode_list_request(ListRequest(0x77, page=2))
    unnumbered = encode_request(QuoteRequest(0x77, "apple", 1, transmission=0))
    packets = [(1.0, CLIENT, SERVER, listing), (1.01, CLIENT, SERVER, listing)]
    packets += [(2.0, CLIENT, SERVER, unnumbered), (2.01, CLIENT, SERVER, unnumbered)]
    write_capture(tmp_path / "d.pcapng", packets)
    first, copy, quote, quote_copy = dissect(tmp_path / "d.pcapng")
    assert copy.get("udp_price.duplicate") == "1" and not copy.has("udp_price.retransmission")
    assert quote.get("udp_price.attempt") == "1" and not quote.has("udp_price.retransmission")
    assert quote_copy.get("udp_price.duplicate") == "1" and not quote_copy.has("udp_price.retransmission")
    assert not first.has("udp_price.duplicate") and not first.has("udp_price.retransmission")


def test_one_forged_datagram_does_not_take_over_another_protocols_conversation(tmp_path: Path) -> None:
    """The heuristic never claims a conversation: DNS after a forged udp-price datagram on the
    same ports stays DNS. A plausible datagram with a bad CRC is still recognised and flagged."""
    dns_query = bytes.fromhex("abcd01000001000000000000076578616d706c6503636f6d0000010001")
    forged = vectors()["quote-request"]
    corrupted = bytearray(forged)
    corrupted[20] ^= 0x01
    client, dns = ("127.0.0.1", 53535), ("127.0.0.1", 53)
    packets = [(1.0, client, dns, dns_query), (2.0, client, dns, forged), (3.0, client, dns, dns_query)]
    packets += [(4.0, CLIENT, ("127.0.0.1", 40001), bytes(corrupted))]
    write_capture(tmp_path / "h.pcapng", packets)
    before, ours, after, bad = dissect(tmp_path / "h.pcapng")
    assert not before.fields and not after.fields  # DNS: no udp_price field at all
    assert ours.get("udp_price.crc32.status") == "1"
    assert bad.get("udp_price.crc32.status") == "0" and bad.has("udp_price.crc32.bad")


def test_items_that_are_not_valid_utf8_are_shown_escaped(tmp_path: Path) -> None:
    request = vectors()["quote-request"]
    items = [b"\xff" * 32, "café crème".encode() + b"\xff" * 20, b"\xe9" + b"a" * 31, "brûlée".encode()[:3]]
    packets = [
        (float(i), CLIENT, SERVER, resealed(request[:16] + it.ljust(32, b"\0") + request[48:]))
        for i, it in enumerate(items)
    ]
    write_capture(tmp_path / "u.pcapng", packets)
    shown = [frame.get("udp_price.item") for frame in dissect(tmp_path / "u.pcapng")]  # dissect: strict UTF-8
    assert shown == ["\\xff" * 32, "café crème" + "\\xff" * 20, "\\xe9" + "a" * 31, "br\\xc3"]


# --- authenticated messages -------------------------------------------------------------------

DOC_SECRET = bytes(range(32))
"""The key of the authentication test vectors in docs/protocol.md: id 7, secret bytes 00 01 ... 1f."""
DOC_SIGNED_MS = {"quote-request": 1_700_000_000_000, "quote-reply": 1_700_000_000_250}
"""The times the doc says each vector was signed at (Unix ms)."""


def doc_tag(signed: bytes) -> str:
    """The tag the doc's key gives ``signed`` (computed here, independently of the project's
    signing code), as tshark shows bytes."""
    tag = hmac.new(DOC_SECRET, signed[:-20], hashlib.sha256).digest()[:16]
    return ":".join(f"{b:02x}" for b in tag)


@pytest.mark.parametrize("port", [SERVER[1], 47001], ids=["default-port", "heuristic"])
def test_auth_vectors_dissect_to_the_documented_values(tmp_path: Path, port: int) -> None:
    docs = auth_vectors()
    assert sorted(docs) == ["quote-reply", "quote-request"]
    server = ("127.0.0.1", port)
    # Captured 0.5 s after the request was signed and 0.75 s before the reply was: skews -0.5, +0.75.
    packets = [
        (1_700_000_000.5, CLIENT, server, docs["quote-request"]),
        (1_699_999_999.5, server, CLIENT, docs["quote-reply"]),
    ]
    write_capture(tmp_path / "a.pcapng", packets)
    frames = dissect(tmp_path / "a.pcapng")
    for (name, expected_skew), frame in zip([("quote-request", "-0.5"), ("quote-reply", "0.75")], frames, strict=True):
        signed = docs[name]
        assert frame.get("udp_price.crc32.status") == "1" and frame.get("udp_price.flags.auth") == "1", name
        assert frame.get("udp_price.kind") == str(signed[3] & 0x3F) and frame.get("udp_price.flags.overloaded") == "0"
        assert_shows(frame, *expected_fields(EXPECTED[name][0]))  # the plain message inside, as the plain vector
        ms = DOC_SIGNED_MS[name]
        assert frame.get("udp_price.auth.key_id") == "7"
        assert frame.get("udp_price.auth.timestamp_ms") == str(ms)
        assert frame.get("udp_price.auth.timestamp") == f"Nov 14, 2023 22:13:20.{ms % 1000:03d}000000 UTC"
        assert frame.get("udp_price.auth.tag") == doc_tag(signed)
        assert (frame.get("udp_price.auth.tag.check") or "").startswith("not verified")
        assert Decimal(frame.get("udp_price.auth.skew") or "") == Decimal(expected_skew)
        assert not frame.has("udp_price.auth.bad_length") and not frame.has("udp_price.auth_trailer")
        assert not frame.has("udp_price.bad_length") and not frame.has("udp_price.unknown")


def test_auth_filter_recipes_of_the_testing_doc(tmp_path: Path) -> None:
    """docs/testing.md's recipes select what they say: signed traffic, one key, a clock far off."""
    docs = auth_vectors()
    packets = [
        (1_700_000_000.0, CLIENT, SERVER, docs["quote-request"]),  # skew 0
        (1_700_000_400.0, SERVER, CLIENT, docs["quote-reply"]),  # signed 400 s before it was seen
        (1_700_000_500.0, CLIENT, SERVER, vectors()["quote-request"]),  # unsigned
    ]
    write_capture(tmp_path / "r.pcapng", packets)

    def numbers(display_filter: str) -> list[int]:
        return [f.number for f in dissect(tmp_path / "r.pcapng", "-Y", display_filter)]

    assert numbers("udp_price.flags.auth == 1") == [1, 2]
    assert numbers("udp_price.auth.key_id == 7") == [1, 2] and numbers("udp_price.auth.key_id == 8") == []
    assert numbers("abs(udp_price.auth.skew) > 300") == [2]
    assert numbers("udp_price.auth.skew < -300") == [2] and numbers("udp_price.auth.skew > 300") == []


def test_auth_trailers_of_the_wrong_length_are_flagged_never_a_lua_error(tmp_path: Path) -> None:
    signed = auth_vectors()["quote-request"]
    batch = bytearray(resealed(vectors()["batch-request"], kind_byte=0x83))
    batch[12] = 200  # a count whose lines (and trailer) the datagram does not hold
    packets = [
        (1.0, CLIENT, SERVER, resealed(signed[:-5] + bytes(4))),  # a 27-byte trailer
        (2.0, CLIENT, SERVER, resealed(signed[:-4] + bytes(5))),  # 29 bytes
        (3.0, CLIENT, SERVER, resealed(bytes(batch[:-4]) + bytes(4))),
        (4.0, CLIENT, SERVER, resealed(signed[:76], kind_byte=0x81)),  # the flag, no trailer at all
    ]
    write_capture(tmp_path / "b.pcapng", packets)
    short, long, batch_frame, bare = dissect(tmp_path / "b.pcapng")  # dissect fails on any Lua error
    for frame in (short, long, batch_frame, bare):
        assert frame.has("udp_price.auth.bad_length") and not frame.has("udp_price.auth.key_id")
        assert frame.get("udp_price.crc32.status") == "1"
    assert short.get("udp_price.item") == long.get("udp_price.item") == "café crème"  # the plain body still shown
    assert short.get("udp_price.auth_trailer") == signed[72:-5].hex(":") and len(signed[72:-5]) == 27
    assert batch_frame.get("udp_price.count") == "200"


def test_signed_exchange_through_the_proxy_dissects_with_its_key_and_a_plausible_skew(tmp_path: Path) -> None:
    tshark()
    keys = tmp_path / "keys.txt"
    keys.write_text(new_key_line(11, bytes(range(100, 132))) + "\n")
    keys.chmod(0o600)
    server, address = start_server("--catalog", str(CATALOG), "--keys", str(keys), "--log-format", "json")
    pcap = tmp_path / "signed.pcapng"
    items = [*ORDERS, ("kiwi", 1)]
    try:
        with proxy_with_capture(address, pcap, "--drop", "30%", "--seed", "5") as (proxy, at):
            quotes = [
                json.loads(
                    run_cli(
                        "udp_client.py", "quote", item, str(qty), "--server", at, "--json", "--key-file", str(keys)
                    ).stdout
                )
                for item, qty in items
            ]
            code, _, _ = stop(proxy)
    finally:
        _, server_out, _ = stop(server)
    assert code == 0
    served = json.loads(server_out.strip().splitlines()[-1])["counters"]
    frames = dissect(pcap)
    by_number = {f.number: f for f in frames}
    assert frames and sum(f.dst_port == address[1] for f in frames) == served["auth.verified"]
    for frame in frames:
        assert frame.get("udp_price.crc32.status") == "1" and frame.get("udp_price.flags.auth") == "1"
        assert frame.get("udp_price.auth.key_id") == "11" and not frame.has("udp_price.auth.bad_length")
        assert abs(Decimal(frame.get("udp_price.auth.skew") or "")) < 5, frame.number
    leg = client_leg(frames, int(at.rsplit(":", 1)[1]))
    assert any(q["attempts"] > 1 for q in quotes)
    for (item, _), quoted in zip(items, quotes, strict=True):
        if quoted["status"] == "NO_ANSWER":
            check_failed_story(leg, quoted)
        else:
            assert quoted["status"] == ("UNKNOWN_ITEM" if item == "kiwi" else "OK")
            check_quote_story(leg, by_number, quoted)
