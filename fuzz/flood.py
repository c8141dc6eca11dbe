"""Flood a server with valid quote requests from one socket, bounded in count and time.

    python fuzz/flood.py 127.0.0.1:9999 --seconds 5 --count 1000000

Prints a JSON report: datagrams sent, replies and BUSY replies received.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time

from udp_price.wire import KIND_MASK, MessageKind, QuoteRequest, Status, encode_request


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("server", help="HOST:PORT (loopback)")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--count", type=int, default=1_000_000)
    args = p.parse_args()
    host, _, port = args.server.rpartition(":")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((host.strip("[]"), int(port)))
    sock.setblocking(False)
    datagrams = [encode_request(QuoteRequest(i, "apple", 1)) for i in range(1024)]
    sent = replies = busy = 0
    deadline = time.monotonic() + args.seconds
    while sent < args.count and time.monotonic() < deadline:
        for data in datagrams:
            try:
                sock.send(data)
                sent += 1
            except (BlockingIOError, ConnectionRefusedError):
                pass
        while True:
            try:
                reply = sock.recv(2048)
            except (BlockingIOError, ConnectionRefusedError):
                break
            replies += 1
            # The kind is the byte's low 6 bits: a BUSY reply to a source at its limit is marked OVERLOADED (0x40).
            busy += len(reply) > 12 and reply[3] & KIND_MASK == MessageKind.QUOTE_REPLY and reply[12] == Status.BUSY
    print(json.dumps({"sent": sent, "replies": replies, "busy_replies": busy}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
