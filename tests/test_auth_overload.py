"""The OVERLOADED mark (0x40) and authentication together: the server's loop marks a reply after
it is signed, so the mark is outside the tag; it must reach the client's session intact, and it
can never change what a signed reply says."""

from __future__ import annotations

import pytest

from udp_price.auth import ClientAuth, Key, open_signed, sign
from udp_price.auth.trailer import AuthFailure
from udp_price.client.congestion import CongestionController
from udp_price.client.session import Answered, ClientSession
from udp_price.wire import (
    FLAG_OVERLOADED,
    QuoteReply,
    QuoteRequest,
    Status,
    encode_reply,
    mark_overloaded,
    seal,
)
from udp_price.wire.framing import KIND_OFFSET

KEY = Key(1, b"k" * 32)
WALL = 1_800_000_000.0


def _reply(rid: int, total: int = 150) -> bytes:
    return encode_reply(QuoteReply(rid, Status.OK, "apple", 3, 50, total, 1, transmission=1))


def test_a_signed_reply_marked_after_signing_still_opens_and_keeps_its_mark() -> None:
    signed = sign(_reply(0x42), KEY, int(WALL * 1000))
    marked = mark_overloaded(signed)
    assert marked[KIND_OFFSET] & FLAG_OVERLOADED
    opened = open_signed(marked, {KEY.key_id: KEY})
    assert opened.inner[KIND_OFFSET] & FLAG_OVERLOADED, "the mark must reach the session"
    assert opened.inner == mark_overloaded(_reply(0x42))


def test_the_mark_does_not_open_the_door_to_other_changes() -> None:
    marked = bytearray(mark_overloaded(sign(_reply(0x42), KEY, int(WALL * 1000))))
    total_at = 12 + 1 + 1 + 2 + 4 + 32 + 8  # header, status, transmission, retry_after, quantity, item, unit
    marked[total_at + 7] ^= 1
    with pytest.raises(AuthFailure) as failure:
        open_signed(seal(bytes(marked[:-4])), {KEY.key_id: KEY})
    assert failure.value.reason == "bad_tag"


def test_a_keyed_session_answers_a_marked_signed_reply_and_reads_the_mark() -> None:
    client = ClientAuth(KEY)
    session = ClientSession(now=0.0, congestion=CongestionController())
    session.send(QuoteRequest(0x77, "apple", 3), now=0.0)
    (datagram,) = session.datagrams_to_send()
    sent = client.sign(datagram, WALL)
    assert open_signed(sent, {KEY.key_id: KEY}).inner == datagram
    reply = mark_overloaded(sign(_reply(0x77), KEY, int(WALL * 1000)))
    plain = client.open(reply, WALL)
    assert isinstance(plain, bytes), plain
    events = session.datagram_received(plain, now=0.01)
    assert [type(e) for e in events] == [Answered]
    assert session.stats["cc.signals.mark"] == 1, session.stats
