"""pcapng captures of what the fault proxy received and did, written with the stdlib.

The block format (draft-ietf-opsawg-pcapng): one Section Header Block, one Interface Description
Block with LINKTYPE_RAW (101: each packet starts with an IPv4 or IPv6 header), then one Enhanced
Packet Block per datagram. The proxy sees UDP payloads, not packets, so each is wrapped in a
synthesized IP + UDP header carrying the real addresses and ports: Wireshark then dissects UDP and,
with contrib/wireshark/udp_price.lua, our protocol. Each packet carries an ``opt_comment`` (what the
proxy did with it) and ``epb_flags`` with its direction (inbound: received by the proxy; outbound:
sent by it).

Pure: no sockets and no clock. Timestamps are passed in (seconds since the epoch); the caller's
file object takes the bytes, and a write error is the caller's to handle (``PcapWriter`` stops at
the first one and remembers it, so relaying never depends on the capture).
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from collections.abc import Callable, Sequence
from enum import IntEnum
from typing import IO

from udp_price.address import Address
from udp_price.faults.plan import Decision

LINKTYPE_RAW = 101
"""Raw IP: the packet data starts with an IPv4 or IPv6 header (its version nibble says which)."""
SHB_TYPE = 0x0A0D0D0A
IDB_TYPE = 0x00000001
EPB_TYPE = 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D
OPT_END = 0
OPT_COMMENT = 1
OPT_SHB_USERAPPL = 4
OPT_IF_NAME = 2
OPT_EPB_FLAGS = 2
SNAPLEN = 0
"""0: no limit on captured length (pcapng section 4.2)."""
UDP_PROTO = 17
IP_TTL = 64


class Direction(IntEnum):
    """epb_flags bits 0-1 (pcapng section 4.3.1): 1 inbound, 2 outbound, 0 not available. The proxy
    uses 0 for a datagram it meant to send and did not (send error, discarded at stop): not on the wire."""

    NOT_SENT = 0
    INBOUND = 1
    OUTBOUND = 2


def _pad4(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + _pad4(value)


def _block(block_type: int, body: bytes) -> bytes:
    """A block: type, total length, body (padded to 32 bits), total length again."""
    body = _pad4(body)
    total = len(body) + 12
    return struct.pack("<II", block_type, total) + body + struct.pack("<I", total)


def _options(options: Sequence[tuple[int, bytes]]) -> bytes:
    if not options:
        return b""
    return b"".join(_option(code, value) for code, value in options) + _option(OPT_END, b"")


def section_header(application: str) -> bytes:
    """The Section Header Block: byte-order magic, version 1.0, section length unknown (-1)."""
    body = struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1)
    return _block(SHB_TYPE, body + _options([(OPT_SHB_USERAPPL, application.encode())]))


def interface_description(name: str) -> bytes:
    """One interface, raw IP, microsecond timestamps (the default if_tsresol)."""
    body = struct.pack("<HHI", LINKTYPE_RAW, 0, SNAPLEN)
    return _block(IDB_TYPE, body + _options([(OPT_IF_NAME, name.encode())]))


def enhanced_packet(timestamp_s: float, packet: bytes, comment: str, direction: Direction) -> bytes:
    """One packet on interface 0: timestamp in microseconds since the epoch, the comment, the direction."""
    micros = round(timestamp_s * 1_000_000)
    header = struct.pack("<IIIII", 0, micros >> 32, micros & 0xFFFFFFFF, len(packet), len(packet))
    options = [(OPT_COMMENT, comment.encode()), (OPT_EPB_FLAGS, struct.pack("<I", int(direction)))]
    return _block(EPB_TYPE, header + _pad4(packet) + _options(options))


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071): ones' complement of the ones' complement sum of 16-bit words.

    That sum is the words read as one big number, modulo 0xFFFF (2**16 is 1 modulo 0xFFFF: the
    end-around carry, RFC 1071 section 2), except that a non-zero sum divisible by 0xFFFF is 0xFFFF.
    One big-number operation in C instead of a Python step per word."""
    if len(data) % 2:
        data += b"\0"
    value = int.from_bytes(data, "big")
    total = value % 0xFFFF or (0xFFFF if value else 0)
    return ~total & 0xFFFF


@functools.lru_cache(maxsize=4096)
def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Parsed once per address (cached): parsing per packet cost more than the rest of the capture."""
    return ipaddress.ip_address(host.split("%", 1)[0])  # a scope id (fe80::1%eth0) is not on the wire


def ip_udp_packet(source: Address, destination: Address, payload: bytes) -> bytes:
    """``payload`` in a UDP header in an IPv4 or IPv6 header (RFC 791 / 8200, RFC 768), checksums
    computed. An IPv4 address next to an IPv6 one is written as IPv4-mapped IPv6 (::ffff:a.b.c.d)."""
    src, dst = _ip(source[0]), _ip(destination[0])
    if src.version != dst.version:
        src, dst = (ipaddress.IPv6Address(f"::ffff:{a}") if a.version == 4 else a for a in (src, dst))
    udp_length = 8 + len(payload)
    if src.version == 4:
        pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, UDP_PROTO, udp_length)
    else:
        pseudo = src.packed + dst.packed + struct.pack("!I3xB", udp_length, UDP_PROTO)
    udp = struct.pack("!HHHH", source[1], destination[1], udp_length, 0) + payload
    udp_sum = _checksum(pseudo + udp) or 0xFFFF  # 0 means "no checksum" in UDP (RFC 768)
    udp = udp[:6] + struct.pack("!H", udp_sum) + udp[8:]
    if src.version == 4:
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_length, 0, 0x4000, IP_TTL, UDP_PROTO, 0,
                             src.packed, dst.packed)  # fmt: skip
        header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
        return header + udp
    return struct.pack("!IHBB16s16s", 6 << 28, udp_length, UDP_PROTO, IP_TTL, src.packed, dst.packed) + udp


MAX_OFFSETS_LISTED = 16
"""A comment lists at most this many corrupted offsets (then says how many there are in all)."""


def changed_bytes(before: bytes, after: bytes) -> list[int]:
    """0-based offsets where ``after`` differs from ``before`` (over their common length), ascending.

    Cost in C, not in a Python loop per byte: one XOR of the two as big integers, then one step per
    differing byte (a corruption changes a few)."""
    n = min(len(before), len(after))
    if before[:n] == after[:n]:
        return []
    diff = int.from_bytes(before[:n], "big") ^ int.from_bytes(after[:n], "big")
    offsets: list[int] = []
    while diff:
        low_byte = ((diff & -diff).bit_length() - 1) // 8  # counted from the end
        offsets.append(n - 1 - low_byte)
        diff &= ~(0xFF << (8 * low_byte))
    return offsets[::-1]


def _corruption(received: bytes, sent: bytes) -> str:
    offsets = changed_bytes(received, sent)
    shown = ", ".join(map(str, offsets[:MAX_OFFSETS_LISTED]))
    if len(offsets) > MAX_OFFSETS_LISTED:
        shown += f", ... ({len(offsets)} bytes in all)"
    return "corrupted at byte" + ("s " if len(offsets) > 1 else " ") + shown


def fault_story(decision: Decision, received: bytes) -> str:
    """What the proxy did with one received datagram, in words: 'dropped (random)', 'forwarded',
    'duplicated (2 copies)', 'delayed by 120.000 ms', 'corrupted at byte 17', 'truncated to 40 of 76 bytes'."""
    action, sent = decision.action, decision.payload
    if action.startswith("drop:"):
        return f"dropped ({action.split(':', 1)[1]})"
    if action != "deliver":
        return action
    words: list[str] = []
    if sent != received[: len(sent)]:  # one C comparison; offsets are looked for only in a changed datagram
        words.append(_corruption(received, sent))
    if len(sent) < len(received):
        words.append(f"truncated to {len(sent)} of {len(received)} bytes")
    if decision.copies > 1:
        words.append(f"duplicated ({decision.copies} copies)")
    if decision.delay_s > 0:
        words.append(f"delayed by {decision.delay_s * 1000:.3f} ms")
    return ", ".join(words) or "forwarded"


def with_held_drops(story: str, held: list[bool]) -> str:
    """``story`` told truthfully when delayed copies found the hold budget full (tail-dropped)."""
    dropped = held.count(False)
    if not dropped:
        return story
    if dropped == len(held):
        return "dropped (held_full: the hold budget for delayed datagrams is full)"
    return f"{story}; {dropped} of {len(held)} copies dropped (held_full)"


class PcapWriter:
    """Writes one pcapng section to ``out`` (a binary file). The first write error stops the
    capture and is kept in ``error``; later packets are not written (the caller keeps relaying)."""

    def __init__(self, out: IO[bytes], application: str = "udp-price fault_proxy") -> None:
        self.file = out
        self.out: IO[bytes] | None = out
        """``file`` while writing; None once a write failed."""
        self.error: OSError | ValueError | None = None
        self.packets = 0
        self._write(section_header(application) + interface_description("fault_proxy"))

    def packet(
        self,
        timestamp_s: float,
        source: Address,
        destination: Address,
        payload: bytes,
        comment: str,
        direction: Direction | bool,
    ) -> None:
        """Record one datagram as an IP/UDP packet from ``source`` to ``destination``; ``direction``
        True/False is short for inbound/outbound."""
        if self.out is None:
            return
        if isinstance(direction, bool):
            direction = Direction.INBOUND if direction else Direction.OUTBOUND
        packet = ip_udp_packet(source, destination, payload)
        if self._write(enhanced_packet(timestamp_s, packet, comment, direction)):
            self.packets += 1

    def flush(self) -> None:
        """Push buffered packets to the file, so a reader sees every packet written so far."""
        if self.out is not None:
            try:
                self.out.flush()
            except (OSError, ValueError) as e:
                self._failed(e)

    def _write(self, data: bytes) -> bool:
        assert self.out is not None
        try:
            self.out.write(data)
        except (OSError, ValueError) as e:  # disk full, closed file
            self._failed(e)
            return False
        return True

    def _failed(self, e: OSError | ValueError) -> None:
        self.out = None
        self.error = e


class ProxyCapture:
    """The fault proxy's side of a capture: turns (direction, flow, index, decision) into packets
    with comments such as 'up #3 flow 0 received: dropped (random)'. ``clock_offset_s`` turns the
    relay's monotonic seconds into epoch seconds (wall clock read once, at start)."""

    FLUSH_EVERY_S = 1.0
    """A reader (tail, a test, Wireshark reloading) sees packets at most this late; flushing per packet
    would cost a system call each."""

    def __init__(
        self, writer: PcapWriter, clock_offset_s: float, on_error: Callable[[BaseException], None] | None = None
    ) -> None:
        self.writer = writer
        self._flushed_at: float | None = None
        self.clock_offset_s = clock_offset_s
        self.on_error = on_error
        """Called once, with the first write error (the proxy says so and keeps relaying)."""

    def received(self, now: float, hop: tuple[Address, Address], label: str, data: bytes, story: str) -> None:
        """A datagram the proxy received on ``hop`` (source, destination), and what it decided."""
        self._packet(now, hop, data, f"{label} received: {story}", Direction.INBOUND)

    def sent(self, now: float, hop: tuple[Address, Address], label: str, data: bytes, story: str) -> None:
        """A datagram the proxy sent on ``hop``."""
        self._packet(now, hop, data, f"{label} sent: {story}", Direction.OUTBOUND)

    def not_sent(self, now: float, hop: tuple[Address, Address], label: str, data: bytes, why: str) -> None:
        """A datagram the proxy meant to send on ``hop`` and did not (``why``): no direction, as it
        never went on the wire."""
        self._packet(now, hop, data, f"{label} NOT SENT: {why}", Direction.NOT_SENT)

    def _packet(self, now: float, hop: tuple[Address, Address], data: bytes, comment: str, way: Direction) -> None:
        if self.writer.out is None:
            return
        self.writer.packet(now + self.clock_offset_s, hop[0], hop[1], data, comment, way)
        if self._flushed_at is None or now - self._flushed_at >= self.FLUSH_EVERY_S:
            self._flushed_at = now
            self.writer.flush()
        if self.writer.error is not None and self.on_error is not None:
            self.on_error(self.writer.error)
