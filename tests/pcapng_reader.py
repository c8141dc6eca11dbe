"""A minimal pcapng reader, independent of udp_price.faults.pcap: the tests read captures back with it."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Packet:
    timestamp_us: int
    packet: bytes
    comment: str
    inbound: bool
    flags: int


def read_pcapng(path: Path) -> list[Packet]:
    """Every Enhanced Packet Block of a little-endian pcapng file, after checking the SHB and IDB."""
    data = path.read_bytes()
    packets: list[Packet] = []
    offset, seen = 0, []
    while offset < len(data):
        block_type, total = struct.unpack_from("<II", data, offset)
        assert total % 4 == 0 and total >= 12, f"bad block length {total} at {offset}"
        assert struct.unpack_from("<I", data, offset + total - 4)[0] == total, "trailing length differs"
        body = data[offset + 8 : offset + total - 4]
        seen.append(block_type)
        if block_type == 0x0A0D0D0A:
            assert struct.unpack_from("<IHH", body) == (0x1A2B3C4D, 1, 0)
        elif block_type == 1:
            assert struct.unpack_from("<H", body)[0] == 101  # LINKTYPE_RAW
        elif block_type == 6:
            packets.append(_epb(body))
        offset += total
    assert seen[:2] == [0x0A0D0D0A, 1], f"blocks start {seen[:2]}"
    return packets


def _epb(body: bytes) -> Packet:
    interface, high, low, captured, original = struct.unpack_from("<IIIII", body)
    assert interface == 0 and captured == original
    packet = body[20 : 20 + captured]
    options = _options(body[20 + captured + (-captured % 4) :])
    flags = struct.unpack("<I", options[2])[0]
    return Packet((high << 32) | low, packet, options[1].decode(), flags & 3 == 1, flags)


def _options(raw: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    offset = 0
    while offset < len(raw):
        code, length = struct.unpack_from("<HH", raw, offset)
        if code == 0:
            break
        out[code] = raw[offset + 4 : offset + 4 + length]
        offset += 4 + length + (-length % 4)
    return out


def udp_payload(packet: bytes) -> bytes:
    """The UDP payload of a raw IPv4 or IPv6 packet."""
    header = (packet[0] & 0x0F) * 4 if packet[0] >> 4 == 4 else 40
    return packet[header + 8 :]
