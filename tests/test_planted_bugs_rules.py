"""Tests written against bugs a reviewer planted one at a time and the suite let through (see
tests/test_planted_bugs.py): the congestion controller's rules at their exact boundaries, the
ordered writer with a gap in what completes, and a UDP checksum that computes to 0."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from udp_price.bulk.reader import Row
from udp_price.bulk.results import OrderedWriter, RowResult, Summary
from udp_price.client.congestion import BUSY, DELAY, MARK, CongestionConfig, CongestionController
from udp_price.faults.pcap import ip_udp_packet

# ------------------------------------------------------------------ congestion: the rules

RTT = 0.01


@pytest.mark.parametrize(("still_in_flight", "grows"), [(0, True), (-1, True), (-2, False), (-3, False)])
def test_an_answer_grows_the_window_only_if_the_window_was_full(still_in_flight: int, grows: bool) -> None:
    """docs/congestion.md (RFC 7661): an answer counts only if the window was full when it
    arrived. ``in_flight`` is what is still in flight after the answer, so the answered request
    and the others filled the window when window - 1 are still in flight; with window - 2 one
    slot was unused (slow start: a counted answer is +1)."""
    c = CongestionController(CongestionConfig(initial_window=4, max_window=64))
    window = c.window
    c.on_answered(RTT, 0.0, RTT, in_flight=window + still_in_flight)
    assert c.window == (window + 1 if grows else window)


@pytest.mark.parametrize("why", [MARK, BUSY, DELAY])
def test_a_signal_about_a_transmission_sent_when_the_reduction_began_does_not_reduce_again(why: str) -> None:
    """At most once per round trip: a signal counts only for a transmission sent *after* the last
    reduction began (RFC 9002 7.3.2); one sent at that very instant belongs to the same episode."""
    c = CongestionController(CongestionConfig(initial_window=16, max_window=64))
    began = 1.0
    assert c.on_congestion(began, began - RTT, MARK, RTT)  # the reduction begins at `began`
    halved = c.window
    assert halved == 8
    later = began + RTT / 10  # well before any periodic slowdown (2 RTTs after the first reduction)
    assert not c.on_congestion(later, began, why)
    assert c.window == halved, "sent exactly when the reduction began: the same episode"
    assert c.on_congestion(later, began + 0.001, why), "sent after it began: a new episode"
    assert c.window == halved // 2


# ------------------------------------------------------------------ the ordered writer


class ListSink:
    def __init__(self) -> None:
        self.written: list[int] = []

    def write(self, row: Row, outcome: RowResult) -> None:
        self.written.append(row.seq)


def rows(n: int) -> list[Row]:
    return [Row(i, i + 2, ["apple", "1"]) for i in range(n)]


OK = RowResult("OK", 50, 50, 1)


@pytest.mark.parametrize("done_first", [[0, 2], [0, 3], [0, 1, 3], [0, 2, 3], [1, 2], [1, 3]])
def test_rows_completed_with_a_gap_wait_for_it_and_none_is_lost(done_first: list[int]) -> None:
    """A row completed while an earlier one is pending is held, not written out of order; the
    pending row, completed later, is written, then everything held after it: every row exactly
    once, in input order."""
    sink, summary = ListSink(), Summary()
    writer = OrderedWriter(sink, summary, lambda n, b: None, lambda e: None)
    all_rows = rows(4)
    writer.complete_many([all_rows[i] for i in done_first], [OK] * len(done_first))
    head = 0
    while head in done_first:
        head += 1
    assert sink.written == list(range(head)), "only the unbroken head of the input is written"
    missing = [r for r in all_rows if r.seq not in done_first]
    assert all(writer.pending(r) for r in missing), "a row not yet completed is still owed"
    writer.complete_many(missing, [OK] * len(missing))
    assert sink.written == [0, 1, 2, 3]
    assert summary.rows == 4


# ------------------------------------------------------------------ a UDP checksum of 0


def ones_complement_sum(data: bytes) -> int:
    """RFC 1071, word by word with the end-around carry (independent of the code under test)."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return total


def pseudo_header(src: str, dst: str, udp_length: int) -> bytes:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        return s.packed + d.packed + struct.pack("!BBH", 0, 17, udp_length)
    return s.packed + d.packed + struct.pack("!I3xB", udp_length, 17)


def payload_summing_to_zero_checksum(src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    """A 4-byte payload that makes the UDP checksum compute to 0: the ones' complement sum of the
    pseudo-header, header and payload (checksum field 0) comes to 0xFFFF."""
    prefix = b"QZ"
    udp = struct.pack("!HHHH", src[1], dst[1], 8 + 4, 0) + prefix
    rest = ones_complement_sum(pseudo_header(src[0], dst[0], 12) + udp)
    word = 0xFFFF - rest  # rest + word == 0xFFFF: ones' complement 0
    return prefix + struct.pack("!H", word)


@pytest.mark.parametrize(
    ("src", "dst"),
    [(("127.0.0.1", 40000), ("127.0.0.1", 9999)), (("::1", 40000), ("::1", 9999))],
)
def test_a_udp_checksum_that_computes_to_zero_is_written_as_ffff(src: tuple[str, int], dst: tuple[str, int]) -> None:
    """RFC 768: a checksum field of 0 means "no checksum"; a computed 0 is sent as 0xFFFF (its
    ones' complement twin), and the datagram still verifies."""
    payload = payload_summing_to_zero_checksum(src, dst)
    packet = ip_udp_packet(src, dst, payload)
    udp = packet[20:] if ":" not in src[0] else packet[40:]
    assert udp[8:] == payload
    (field,) = struct.unpack_from("!H", udp, 6)
    assert field == 0xFFFF
    assert ones_complement_sum(pseudo_header(src[0], dst[0], len(udp)) + udp) == 0xFFFF, "it verifies"
