"""The pure server core: bytes in, bytes out, no sockets."""

from __future__ import annotations

import struct
import zlib

import pytest
from helpers import expected_prices

from udp_price.catalog import Catalog
from udp_price.server.core import QuoteServer
from udp_price.server.guards import RateLimiter
from udp_price.wire import QuoteRequest, Status, decode_reply, encode_request
from wire_format import MAX_QUANTITY, MESSAGE_SIZE, VERSION

ADDR = ("127.0.0.1", 40000)


@pytest.fixture
def core() -> QuoteServer:
    return QuoteServer(Catalog.from_prices(expected_prices() | {"yacht": 10**15}))


def ask(core: QuoteServer, item: str, quantity: int, rid: int = 42) -> tuple[Status, int, int]:
    out = core.handle_datagram(encode_request(QuoteRequest(rid, item, quantity)), ADDR, 0.0)
    assert out is not None
    reply = decode_reply(out)
    assert reply.request_id == rid and reply.item == item and reply.quantity == quantity
    assert reply.catalog_version == core.catalog.version
    return reply.status, reply.unit_price, reply.total


def test_every_catalog_item_is_priced_exactly(core: QuoteServer) -> None:
    for item, cents in expected_prices().items():
        assert ask(core, item, 7) == (Status.OK, cents, 7 * cents)


def test_error_statuses(core: QuoteServer) -> None:
    assert ask(core, "kiwi", 1)[0] is Status.UNKNOWN_ITEM
    assert ask(core, "apple", 0)[0] is Status.BAD_QUANTITY
    assert ask(core, "apple", MAX_QUANTITY + 1)[0] is Status.BAD_QUANTITY
    assert ask(core, "apple", MAX_QUANTITY) == (Status.OK, 50, 50 * MAX_QUANTITY)
    assert ask(core, "yacht", MAX_QUANTITY)[0] is Status.OVERFLOW
    assert core.stats["status.UNKNOWN_ITEM"] == 1 and core.stats["status.BAD_QUANTITY"] == 2


def test_garbage_is_counted_and_dropped(core: QuoteServer) -> None:
    for junk in (b"", b"\x00", b"hello world", bytes(MESSAGE_SIZE), bytes(5000)):
        assert core.handle_datagram(junk, ADDR, 0.0) is None
    good = bytearray(encode_request(QuoteRequest(1, "apple", 1)))
    good[30] ^= 0x40
    assert core.handle_datagram(bytes(good), ADDR, 0.0) is None
    assert core.stats["malformed.bad_length"] == 4
    assert core.stats["malformed.bad_checksum"] == 2
    assert core.stats["replies"] == 0 and core.stats["dropped"] == 6


def reseal(body: bytes) -> bytes:
    return body + struct.pack(">I", zlib.crc32(body))


def test_intact_header_with_bad_body_gets_malformed_status(core: QuoteServer) -> None:
    body = encode_request(QuoteRequest(99, "apple", 1))[:-4]
    out = core.handle_datagram(reseal(body[:16] + b"\xff" + body[17:]), ADDR, 0.0)
    assert out is not None
    reply = decode_reply(out)
    assert (reply.status, reply.request_id) == (Status.MALFORMED, 99)
    assert core.stats["malformed.bad_utf8"] == 1


def test_other_version_is_told_so(core: QuoteServer) -> None:
    body = encode_request(QuoteRequest(77, "apple", 1))[:-4]
    same_length = reseal(body[:2] + b"\x09" + body[3:])
    longer = reseal(body[:2] + b"\x03" + body[3:] + bytes(40))  # a future layout, sealed as every version is
    for data in (same_length, longer):
        out = core.handle_datagram(data, ADDR, 0.0)
        assert out is not None and len(out) <= len(data)
        reply = decode_reply(out)
        assert (reply.status, reply.request_id) == (Status.UNSUPPORTED_VERSION, 77)
    assert core.handle_datagram(reseal(body[:2] + b"\x02" + body[3:20]), ADDR, 0.0) is None, "short: would amplify"


def test_a_corrupted_version_byte_is_noise_not_another_version(core: QuoteServer) -> None:
    # The CRC32 seal is shared by every version and checked first: a flipped version byte (or any
    # other datagram whose seal fails) is dropped, never told UNSUPPORTED_VERSION, which a client
    # would take as a final answer.
    good = encode_request(QuoteRequest(77, "apple", 1))
    for version in (v for v in (0, 1, 2, 9, 255) if v != VERSION):
        flipped = good[:2] + bytes([version]) + good[3:]
        assert core.handle_datagram(flipped, ADDR, 0.0) is None
        assert core.handle_datagram(flipped + bytes(40), ADDR, 0.0) is None, "longer, unsealed"
    assert core.stats["replies"] == 0 and core.stats["malformed.bad_checksum"] == 4


def test_replies_and_unknown_kinds_are_never_answered(core: QuoteServer) -> None:
    # Answering a reply (even with MALFORMED) makes one spoofed datagram loop between two servers.
    served = [
        core.handle_datagram(encode_request(QuoteRequest(i, "apple", 1)), ("127.0.0.1", 40000 + i), 0.0)
        for i in range(3)
    ]
    sealed_replies = [out for out in served if out is not None]
    body = encode_request(QuoteRequest(9, "apple", 1))[:-4]
    others = [reseal(body[:3] + bytes([kind]) + body[4:]) for kind in (0, 2, 4, 6, 7, 8, 200, 255)]
    other_version = [reseal(body[:2] + b"\x02" + bytes([kind]) + body[4:]) for kind in (2, 4, 6, 9)]
    before = core.stats["replies"]
    for data in sealed_replies + others + other_version:
        assert core.handle_datagram(data, ADDR, 0.0) is None
    assert core.stats["replies"] == before
    assert core.stats["refused.not_a_request"] == len(sealed_replies) + len(others) + len(other_version)


def test_reflector_source_ports_are_dropped_before_anything_else(core: QuoteServer) -> None:
    request = encode_request(QuoteRequest(5, "apple", 1))
    ports = (0, 7, 13, 17, 19, 37, 53, 123, 161, 1900, 11211)
    for port in ports:
        assert core.handle_datagram(request, ("127.0.0.1", port), 0.0) is None
    assert core.stats["refused.source_port"] == len(ports) and core.stats["replies"] == 0
    assert core.handle_datagram(request, ("127.0.0.1", 40000), 0.0) is not None, "an ephemeral port is served"


def test_no_reply_is_larger_than_its_request(core: QuoteServer) -> None:
    good = encode_request(QuoteRequest(5, "apple", 1))
    for data in (good, good[:13], good + b"x", b"QP\x05\x01" + bytes(8)):
        out = core.handle_datagram(data, ADDR, 0.0)
        assert out is None or len(out) <= len(data)


def test_batch_lines_priced_in_order(core: QuoteServer) -> None:
    from udp_price.wire import BatchRequest, decode_batch_reply, encode_batch_request, lines_digest

    data = encode_batch_request(BatchRequest(8, (("apple", 2), ("kiwi", 1), ("pear", 0), ("yacht", MAX_QUANTITY))))
    out = core.handle_datagram(data, ADDR, 0.0)
    assert out is not None and len(out) < len(data)
    reply = decode_batch_reply(out)
    assert (reply.request_id, reply.status, reply.lines_digest) == (8, Status.OK, lines_digest(data))
    assert [(r.status, r.total) for r in reply.results] == [
        (Status.OK, 100),
        (Status.UNKNOWN_ITEM, 0),
        (Status.BAD_QUANTITY, 0),
        (Status.OVERFLOW, 0),
    ]
    assert core.stats["batch_lines"] == 4


def test_malformed_batch_gets_a_small_batch_error(core: QuoteServer) -> None:
    from udp_price.wire import BatchRequest, decode_batch_reply, encode_batch_request

    body = encode_batch_request(BatchRequest(9, (("apple", 2),)))[:-4]
    bad = reseal(body[:20] + b"\xff" + body[21:])
    out = core.handle_datagram(bad, ADDR, 0.0)
    assert out is not None and len(out) < len(bad)
    reply = decode_batch_reply(out)
    assert (reply.request_id, reply.status, reply.results) == (9, Status.MALFORMED, ())


def test_catalog_listing_pages(core: QuoteServer) -> None:
    from udp_price.wire import ListRequest, decode_list_reply, encode_list_request
    from wire_format import LIST_PAGE_SIZE

    everything = sorted(core.catalog.prices.items())
    pages = -(-len(everything) // LIST_PAGE_SIZE)
    got: list[tuple[str, int]] = []
    for page in range(pages):
        data = encode_list_request(ListRequest(page + 100, page))
        out = core.handle_datagram(data, ADDR, 0.0)
        assert out is not None and len(out) <= len(data)
        reply = decode_list_reply(out)
        assert (reply.status, reply.page, reply.pages, reply.request_id) == (Status.OK, page, pages, page + 100)
        got += reply.entries
    assert got == everything
    past = decode_list_reply(core.handle_datagram(encode_list_request(ListRequest(1, pages)), ADDR, 0.0) or b"")
    assert (past.status, past.entries) == (Status.BAD_PAGE, ())


def test_unsealed_junk_from_new_sources_cannot_lock_out_new_clients() -> None:
    """A spoofed flood of junk from ever-new sources used to drain the rate limiter's newcomers'
    pool, so a real new client was refused. Unsealed bytes are never answered: they are now
    dropped before the limiter when their source is unknown."""
    core = QuoteServer(Catalog.from_prices({"apple": 50}), limiter=RateLimiter(rate=10, burst=10))
    for i in range(10_000):
        assert core.handle_datagram(b"x", (f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 5000), 0.0) is None
    assert core.stats["malformed.bad_length"] == 10_000
    reply = core.handle_datagram(encode_request(QuoteRequest(7, "apple", 2, transmission=1)), ("192.0.2.9", 5000), 0.0)
    assert reply is not None and decode_reply(reply).total == 100
