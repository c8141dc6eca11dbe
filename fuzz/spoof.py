"""Attack tools: spoofed UDP on loopback, CRC32 forgery, reading what a socket has queued.

Raw sockets need root (``raw_socket`` raises PermissionError without it).
"""

from __future__ import annotations

import socket
import struct
import zlib

from udp_price.address import Address


def raw_socket() -> socket.socket:
    """A raw IPv4 socket that sends hand-built packets with any source address (root only)."""
    return socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)


def send_spoofed(raw: socket.socket, source: Address, dest: Address, payload: bytes) -> None:
    """One UDP datagram to ``dest`` that claims to come from ``source`` (IPv4, UDP checksum 0 = none,
    which RFC 768 allows; the kernel fills in the IP checksum and length under IP_HDRINCL)."""
    udp = struct.pack(">HHHH", source[1], dest[1], 8 + len(payload), 0) + payload
    ip = struct.pack(
        ">BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(udp),
        0,
        0,
        64,
        socket.IPPROTO_UDP,
        0,
        socket.inet_aton(source[0]),
        socket.inet_aton(dest[0]),
    )
    raw.sendto(ip + udp, (dest[0], 0))


def forge_crc(data: bytes, offset: int, target: int) -> bytes:
    """``data`` with the 4 bytes at ``offset`` replaced so that zlib.crc32 of the result is ``target``.

    CRC32 is affine over GF(2): flipping a set of bits changes the CRC by the XOR of what each bit
    alone changes it by. So solve 32 linear equations for the 32 free bits (Gaussian elimination).
    """
    base = bytearray(data)
    base[offset : offset + 4] = bytes(4)
    base_crc = zlib.crc32(base)
    rows = []  # (effect on the CRC, which free bits produce it)
    for bit in range(32):
        probe = bytearray(base)
        probe[offset + bit // 8] ^= 1 << (bit % 8)
        rows.append((zlib.crc32(probe) ^ base_crc, 1 << bit))
    basis: dict[int, tuple[int, int]] = {}  # leading bit -> row
    for effect, bits in rows:
        for lead in sorted(basis, reverse=True):
            if effect >> lead & 1:
                effect, bits = effect ^ basis[lead][0], bits ^ basis[lead][1]
        if effect:
            basis[effect.bit_length() - 1] = (effect, bits)
    want, chosen = target ^ base_crc, 0
    for lead in sorted(basis, reverse=True):
        if want >> lead & 1:
            want, chosen = want ^ basis[lead][0], chosen ^ basis[lead][1]
    assert want == 0, "4 contiguous bytes always reach every CRC32"
    out = bytearray(base)
    for bit in range(32):
        if chosen >> bit & 1:
            out[offset + bit // 8] ^= 1 << (bit % 8)
    assert zlib.crc32(out) == target
    return bytes(out)


def reseal(body: bytes) -> bytes:
    """``body`` with a correct trailing CRC32, as every message version carries."""
    return body + zlib.crc32(body).to_bytes(4, "big")


def drain(sock: socket.socket) -> list[bytes]:
    """Every datagram already queued on ``sock``, without waiting."""
    out = []
    sock.setblocking(False)
    try:
        while True:
            try:
                out.append(sock.recv(65535))
            except BlockingIOError:
                return out
    finally:
        sock.setblocking(True)
