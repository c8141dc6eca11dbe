"""Baselines the benchmark compares udp-price with, each runnable as its own process.

    python bench/baselines.py echo          # bare stdlib UDP echo server: the practical limit
    python bench/baselines.py tcp-pickle    # the original design: TCP accept per quote, pickle

Each prints 'listening on 127.0.0.1:PORT' and serves until killed. Loopback only.
"""

from __future__ import annotations

import pickle
import socket
import sys

# The original's price table: floats, as it had them (the flaw udp-price fixes with integer cents).
ORIGINAL_PRICES = {"apple": 0.50, "banana": 0.25, "orange": 0.60, "pear": 0.55}


def echo_server() -> None:
    """recvfrom / sendto, nothing else."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    print(f"listening on 127.0.0.1:{sock.getsockname()[1]}", flush=True)
    recvfrom, sendto = sock.recvfrom, sock.sendto
    while True:
        data, addr = recvfrom(2048)
        sendto(data, addr)


def tcp_pickle_server() -> None:
    """One TCP connection per quote; the request is a pickled [item, quantity] (unsafe, as the original was)."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(128)
    print(f"listening on 127.0.0.1:{srv.getsockname()[1]}", flush=True)
    while True:
        conn, _ = srv.accept()
        with conn:
            item, quantity = pickle.loads(conn.recv(4096))
            conn.sendall(pickle.dumps(ORIGINAL_PRICES.get(item, 0.0) * quantity))


def tcp_pickle_quote(addr: tuple[str, int], item: str, quantity: int) -> float:
    """The original client: connect, send the pickle, read the answer, close."""
    with socket.create_connection(addr) as conn:
        conn.sendall(pickle.dumps([item, quantity]))
        conn.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := conn.recv(4096):
            data += chunk
    result: float = pickle.loads(data)
    return result


if __name__ == "__main__":
    {"echo": echo_server, "tcp-pickle": tcp_pickle_server}[sys.argv[1]]()
