"""The replay window against the attacks found on it: a client's timestamps never run ahead of
its clock, nothing captured before a restart is answered after it, the set's memory is what the
docs say, and a Key made in Python is checked like a keys-file line. Pure: time is passed in."""

from __future__ import annotations

import argparse
import random
import time
import tracemalloc
import zlib

import pytest
from helpers import CATALOG

from udp_price.auth import ClientAuth, Key, ReplayWindow, ServerAuth
from udp_price.catalog import load_catalog
from udp_price.server.core import QuoteServer
from udp_price.server.ops import build_server
from udp_price.wire import QuoteRequest, encode_request

KEY = Key(7, b"s" * 32)
WALL = 1_800_000_000.0
ADDR = ("127.0.0.1", 40000)


def server_started_at(start_s: float) -> QuoteServer:
    """A keyed server whose process started at Unix time ``start_s`` (its monotonic now 0 is WALL)."""
    replay = ReplayWindow(not_before_ms=int(start_s * 1000))
    return QuoteServer(load_catalog(CATALOG), auth=ServerAuth({7: KEY}, wall_offset_s=WALL, replay=replay))


def quote(request_id: int, transmission: int = 1) -> bytes:
    return encode_request(QuoteRequest(request_id, "apple", 3, transmission))


def test_a_request_captured_before_a_restart_is_not_answered_after_it() -> None:
    client = ClientAuth(KEY)
    before = server_started_at(WALL - 60)
    captured = client.sign(quote(0xC0FFEE), WALL - 10)
    assert before.handle_datagram(captured, ADDR, -10.0) is not None
    assert before.handle_datagram(captured, ("127.0.0.77", 5000), -9.0) is None, "a replay to the same process"
    after = server_started_at(WALL - 5)  # restarted: its memory is empty
    assert after.handle_datagram(captured, ("127.0.0.77", 5000), 0.0) is None
    assert after.stats["auth.dropped.before_start"] == 1 and after.stats["replies"] == 0
    retry = client.sign(quote(0xC0FFEE, transmission=2), WALL)  # the client retries, signed afresh
    assert after.handle_datagram(retry, ADDR, 0.0) is not None


def test_a_client_whose_clock_lags_is_refused_for_the_lag_after_a_restart() -> None:
    lagging = ClientAuth(KEY)
    server = server_started_at(WALL)
    assert server.handle_datagram(lagging.sign(quote(1), WALL - 3), ADDR, 0.0) is None
    assert server.stats["auth.dropped.before_start"] == 1
    assert server.handle_datagram(lagging.sign(quote(1, 2), WALL + 3.5 - 3), ADDR, 3.5) is not None


def test_the_server_shell_starts_the_replay_window_at_its_own_start() -> None:
    args = argparse.Namespace(rate=0, burst=1.0, cache_size=0, cache_age=1.0, auth_keys={7: KEY}, allow_anonymous=False)
    before_ms = int(time.time() * 1000)
    server = build_server(args, load_catalog(CATALOG))
    assert server.auth is not None
    assert before_ms <= server.auth.replay.not_before_ms <= int(time.time() * 1000)


def test_replay_memory_per_entry_is_bounded_as_documented() -> None:
    """200,000 entries (the default capacity) from 50 keys over 300 s: under 100 bytes each
    (the docs say about 80, 16 MB). Measured, not timed."""
    now = int(WALL * 1000)
    rng = random.Random(17)
    entries = [(rng.randrange(1, 50), rng.getrandbits(56), now - rng.randrange(300_000)) for _ in range(200_000)]
    tracemalloc.start()
    try:
        window = ReplayWindow()
        for key_id, fingerprint, stamp in entries:
            window.check(key_id, fingerprint, stamp, now)
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(window) == 200_000
    assert used / len(window) < 100, f"{used / len(window):.0f} bytes per entry"


@pytest.mark.parametrize(
    ("key_id", "secret", "error", "message"),
    [
        (9, b"", ValueError, "the secret is 0 bytes; it must be 16 to 64"),
        (9, b"abc", ValueError, "the secret is 3 bytes"),
        (9, b"s" * 65, ValueError, "the secret is 65 bytes"),
        (2**32, b"s" * 32, ValueError, "key id 4294967296 is not a whole number from 0 to 4294967295"),
        (-1, b"s" * 32, ValueError, "key id -1 is not"),
        ("7", b"s" * 32, TypeError, "the key id must be an int, not str"),
        (True, b"s" * 32, TypeError, "the key id must be an int, not bool"),
        (8, "s" * 32, TypeError, "the secret must be bytes"),
        (8, bytearray(32), TypeError, "the secret must be bytes"),
    ],
)
def test_a_key_made_in_python_is_checked_at_once(key_id: object, secret: object, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        Key(key_id, secret)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", [b"s" * 32, "keys.txt", 7])
def test_the_client_api_refuses_what_is_not_a_key(key: object) -> None:
    from udp_price.client.api import QuoteClient

    with pytest.raises(TypeError, match=r"key must be a udp_price\.auth\.Key"):
        QuoteClient(("127.0.0.1", 9), key=key)  # type: ignore[arg-type]


def test_the_edges_of_a_valid_key_are_accepted() -> None:
    assert Key(0, b"\0" * 16).key_id == 0 and Key(2**32 - 1, b"x" * 64).key_id == 2**32 - 1


def test_noise_is_counted_apart_from_forgery_though_a_good_datagram_skips_the_crc() -> None:
    server = server_started_at(WALL - 1)
    data = ClientAuth(KEY).sign(quote(42), WALL)
    flipped = data[:20] + bytes([data[20] ^ 1]) + data[21:]  # noise: the CRC32 no longer matches
    assert server.handle_datagram(flipped, ADDR, 0.0) is None
    forged = data[:20] + bytes([data[20] ^ 1]) + data[21:-4]
    forged += zlib.crc32(forged).to_bytes(4, "big")  # a forger fixes the CRC32: the tag still fails
    assert server.handle_datagram(forged, ADDR, 0.0) is None
    assert (server.stats["auth.dropped.bad_checksum"], server.stats["auth.dropped.bad_tag"]) == (1, 1)
    crc_only = data[:-1] + bytes([data[-1] ^ 1])  # every byte the tag covers is intact: answered
    assert server.handle_datagram(crc_only, ADDR, 0.0) is not None
    assert server.handle_datagram(data, ADDR, 0.0) is None, "the same tag: a replay"
    assert server.stats["auth.dropped.replay"] == 1


def test_signed_requests_do_not_fill_the_reply_cache_they_could_never_hit() -> None:
    """A byte-identical signed request is a replay (dropped before the cache) and a retransmission
    is signed afresh with a new transmission number, so a stored reply could never be served."""
    from udp_price.server.guards import ReplyCache

    cache = ReplyCache()
    auth = ServerAuth({7: KEY}, allow_anonymous=True, wall_offset_s=WALL)
    server = QuoteServer(load_catalog(CATALOG), cache=cache, auth=auth)
    client = ClientAuth(KEY)
    for tx in (1, 2):
        assert server.handle_datagram(client.sign(quote(9, tx), WALL), ADDR, 0.0) is not None
    assert cache.get((ADDR[0], ADDR[1], 9), quote(9, 2), 0.0) is None
    unsigned = quote(10)  # --allow-anonymous: an unsigned request is cached as without keys
    first = server.handle_datagram(unsigned, ADDR, 0.0)
    assert first is not None and server.handle_datagram(unsigned, ADDR, 0.1) == first
    assert server.stats["cache_hits"] == 1
