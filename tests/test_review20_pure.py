"""Review 20: real bugs the suite let through, each pinned by a pure test (no sockets, no sleeps)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from udp_price.auth.replay import ReplayWindow
from udp_price.catalog import MAX_PRICE, parse_catalog, parse_catalog_exactly, parse_price
from udp_price.client.events import Answered, Failed
from udp_price.client.retry import RetryPolicy
from udp_price.client.session import ClientSession
from udp_price.wire import (
    QuoteReply,
    QuoteRequest,
    Status,
    decode_request,
    encode_reply,
    mark_overloaded,
    split_overload_mark,
)
from udp_price.wire.framing import FLAG_OVERLOADED, KIND_OFFSET, seal

# ---------------------------------------------------------------- client: echoed transmission number


def _one_quote() -> tuple[ClientSession, QuoteRequest]:
    session = ClientSession(RetryPolicy(), 0.0)
    request = QuoteRequest(77, "apple", 3)
    session.send(request, 0.0)
    assert len(session.datagrams_to_send()) == 1
    return session, request


def test_a_reply_echoing_a_transmission_never_sent_is_refused_not_a_crash() -> None:
    """One transmission went out; a sealed reply claiming to answer transmission 2 (a forger who
    knows the id, or a buggy server) must be counted as invalid and ignored. Accepting tx up to
    len(sent_at) + 1 makes the RTT sampling index sent_at[1] and crash the client's receive path."""
    session, request = _one_quote()
    bad = QuoteReply(request.request_id, Status.OK, "apple", 3, 50, 150, 1, 0, 2)
    assert session.datagram_received(encode_reply(bad), 0.01) == []
    assert session.stats["ignored.invalid.transmission_not_sent"] == 1
    good = QuoteReply(request.request_id, Status.OK, "apple", 3, 50, 150, 1, 0, 1)
    events = session.datagram_received(encode_reply(good), 0.02)
    assert len(events) == 1 and isinstance(events[0], Answered)
    assert isinstance(events[0].reply, QuoteReply) and events[0].reply.total == 150


@pytest.mark.parametrize("tx", [2, 3, 255])
def test_no_transmission_beyond_those_sent_is_believed(tx: int) -> None:
    session, request = _one_quote()
    bad = QuoteReply(request.request_id, Status.OK, "apple", 3, 50, 150, 1, 0, tx)
    assert session.datagram_received(encode_reply(bad), 0.01) == []
    assert session.stats["ignored.invalid.transmission_not_sent"] == 1
    assert session.pending == 1


# ---------------------------------------------------------------- catalog: the exact path parses money as Decimal


PRICES_FLOAT_GETS_WRONG = ["0.29", "0.57", "1.13", "1.15", "2.01", "4.35", "8.70", "19.99"]
"""int(float(text) * 100) is one cent short for each of these."""


@pytest.mark.parametrize("text", PRICES_FLOAT_GETS_WRONG)
def test_parse_price_is_exact_where_a_float_is_not(text: str) -> None:
    exact = int(Decimal(text) * 100)
    assert parse_price(text) == exact


def test_exact_and_fast_catalog_parsers_agree_on_every_cent() -> None:
    """The fast parser takes a plain file, the exact one everything else (a quoted cell sends a file
    there). Both must read every price to the cent: 0.00 to 9.99 and a few large ones."""
    prices = [f"{c // 100}.{c % 100:02d}" for c in range(1000)] + ["12345678.91", "9999999999999.99"]
    plain = "item,price\n" + "".join(f"i{n},{p}\n" for n, p in enumerate(prices))
    quoted = "item,price\n" + "".join(f'"i{n}",{p}\n' for n, p in enumerate(prices))
    fast, exact = parse_catalog(plain), parse_catalog_exactly(quoted)
    want = {f"i{n}": int(Decimal(p) * 100) for n, p in enumerate(prices)}
    assert dict(exact.prices) == want
    assert dict(fast.prices) == want
    assert parse_price("10000000000000") == MAX_PRICE


# ---------------------------------------------------------------- auth: the replay floor is inclusive


def test_a_replay_at_the_last_millisecond_of_a_forgotten_second_is_refused() -> None:
    """When the set is full it forgets its oldest second and raises the key's floor to that second's
    last millisecond. A request stamped exactly then was in the forgotten bucket: its replay must be
    refused (the suite's flood uses stamps at .000 and .500 only, so '<' for '<=' went unseen)."""
    window = ReplayWindow(capacity=2)
    now = 1_000_000_000
    oldest = now - 10_001  # the last millisecond of its second (...999)
    assert oldest % 1000 == 999
    assert window.check(1, 11, oldest, now) is None
    assert window.check(1, 12, now - 5_000, now) is None
    assert window.check(1, 13, now - 4_000, now) is None  # over capacity: the oldest second is forgotten
    assert window.check(1, 11, oldest, now) in ("replay", "replay_floor")


# ---------------------------------------------------------------- client: silence is counted from when requests wait


def test_an_idle_gap_is_not_silence_a_request_after_it_gets_its_deadline() -> None:
    """'Nothing answered for a whole deadline while requests waited': a client idle for a minute
    after its last answer sends again; its first timer must not declare the server gone at once.
    Counting silence from the last answer alone (forgetting the idle gap) fails every request
    sent after a pause longer than the deadline, before it has had a single retransmission."""
    session = ClientSession(RetryPolicy(deadline_s=10.0), 0.0)
    first = QuoteRequest(1, "apple", 1)
    session.send(first, 0.0)
    session.datagrams_to_send()
    ok = QuoteReply(1, Status.OK, "apple", 1, 50, 50, 1, 0, 1)
    assert isinstance(session.datagram_received(encode_reply(ok), 0.01)[0], Answered)
    later = QuoteRequest(2, "apple", 2)
    session.send(later, 60.0)
    session.datagrams_to_send()
    due = session.timer()
    assert due is not None and due > 60.0
    assert session.handle_timer(due) == [], "no failure on the first timer after an idle minute"
    assert session.pending == 1
    reply = QuoteReply(2, Status.OK, "apple", 2, 50, 100, 1, 0, 1)
    events = session.datagram_received(encode_reply(reply), due + 0.01)
    assert len(events) == 1 and isinstance(events[0], Answered)


# ---------------------------------------------------------------- auth: a second still inside the window is kept


def test_the_oldest_second_still_inside_the_window_is_not_forgotten() -> None:
    """_expire forgets the seconds the window refuses anyway. The second holding now - window is
    only partly outside: a request stamped in its in-window part must still be caught as a replay
    when a new second opens (forgetting it with '<=' lets a captured request be replayed at the
    window's edge; the suite caught that only through a memory measurement)."""
    window = ReplayWindow()
    s = 1_000_000  # a second
    stamp = s * 1000 + 900
    assert window.check(1, 42, stamp, stamp) is None
    now = s * 1000 + 500 + window.window_ms  # now - window = s.500 <= stamp: still inside
    assert stamp >= now - window.window_ms
    assert window.check(1, 43, now, now) is None  # opens a new second: expiry runs
    assert window.check(1, 42, stamp, now) in ("replay", "replay_floor")


# ---------------------------------------------------------------- client: attempts are clamped to the u8 field


def test_max_attempts_above_255_is_clamped_not_a_crash() -> None:
    """RetryPolicy accepts any max_attempts >= 1 but the transmission number is one byte: the
    session must stop at 255 transmissions and fail the request cleanly, not raise EncodeError
    from renumbered() on the 256th."""
    session = ClientSession(RetryPolicy(max_attempts=300, deadline_s=3600.0), 0.0)
    session.send(QuoteRequest(5, "apple", 1), 0.0)
    sent = [decode_request(d).transmission for d in session.datagrams_to_send()]
    failed: list[Failed] = []
    for _ in range(5000):
        due = session.timer()
        if due is None:
            break
        failed += [e for e in session.handle_timer(due) if isinstance(e, Failed)]
        sent += [decode_request(d).transmission for d in session.datagrams_to_send()]
    assert len(failed) == 1 and session.pending == 0
    assert sent == list(range(1, 256)) and failed[0].attempts == 255


# ---------------------------------------------------------------- client: the policy's RTO floor is used


def test_the_policy_min_timeout_is_the_rto_floor() -> None:
    """RetryPolicy.min_timeout_s is the RTO floor. Every test used the default 0.05 s, which equals
    initial_timeout_s / 5, so a session reading its floor from anywhere else passed."""
    session = ClientSession(RetryPolicy(min_timeout_s=0.2, initial_timeout_s=0.3), 0.0)
    session.send(QuoteRequest(1, "apple", 1), 0.0)
    session.datagrams_to_send()
    ok = QuoteReply(1, Status.OK, "apple", 1, 50, 50, 1, 0, 1)
    session.datagram_received(encode_reply(ok), 0.001)  # a 1 ms path
    assert session.rtt.rto == 0.2


# ---------------------------------------------------------------- wire: taking the OVERLOADED mark off clears only it


def test_split_overload_mark_keeps_the_other_flag() -> None:
    """split_overload_mark (public in udp_price.wire) promises the datagram 'without the OVERLOADED
    flag': clearing the whole flag nibble (kind &= KIND_MASK) would also drop AUTH (0x80)."""
    plain = encode_reply(QuoteReply(1, Status.OK, "apple", 1, 50, 50, 1, 0, 1))
    body = bytearray(plain[:-4])
    body[KIND_OFFSET] |= 0x80  # AUTH, as a signed reply's kind byte carries it
    both = mark_overloaded(seal(bytes(body)))
    assert both[KIND_OFFSET] & FLAG_OVERLOADED and both[KIND_OFFSET] & 0x80
    out, marked = split_overload_mark(both)
    assert marked and out[KIND_OFFSET] == plain[KIND_OFFSET] | 0x80
