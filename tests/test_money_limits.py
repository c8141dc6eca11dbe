"""Money at the limits, on every path that prices a line: the fast single-quote path, the general
single-quote path and the batch path; then the client's checks and the catalog's price parser.

MAX_TOTAL is 2**63 - 1 cents. Two catalog prices make the boundary exact: 42,128,471,623 x
218,934,409 is MAX_TOTAL itself (2**63 - 1 = 49 * 73 * 127 * 92737 * 337 * 649657), and
2**40 x 2**23 is MAX_TOTAL + 1. Totals above 2**53 are where a float would silently round."""

from __future__ import annotations

from decimal import Decimal

import pytest

from udp_price.catalog import MAX_PRICE, Catalog, format_money, parse_price, price_total
from udp_price.client.reply_checks import line_violation, violation
from udp_price.server.core import QuoteServer
from udp_price.wire import (
    BadQuantity,
    BatchRequest,
    LineResult,
    QuoteReply,
    QuoteRequest,
    Status,
    decode_batch_reply,
    decode_reply,
    encode_batch_request,
    encode_reply,
    encode_request,
    parse_quantity,
)
from wire_format import MAX_QUANTITY, MAX_TOTAL

EXACT_UNIT, EXACT_QTY = 42_128_471_623, 218_934_409  # product: MAX_TOTAL exactly
POW_UNIT, POW_QTY = 2**40, 2**23  # product: MAX_TOTAL + 1
BIG_UNIT = MAX_PRICE - 1  # 9,999,999,999,999.99: the largest price a catalog file may hold, less a cent
PRICES = {"exact": EXACT_UNIT, "pow": POW_UNIT, "big": BIG_UNIT, "max": MAX_PRICE, "apple": 50}
ADDR = ("127.0.0.1", 40000)

# (item, quantity, status, total): OK totals are exact integers, OVERFLOW carries no total.
LINES = [
    ("exact", EXACT_QTY, Status.OK, MAX_TOTAL),
    ("exact", EXACT_QTY + 1, Status.OVERFLOW, 0),
    ("pow", POW_QTY - 1, Status.OK, MAX_TOTAL + 1 - POW_UNIT),
    ("pow", POW_QTY, Status.OVERFLOW, 0),
    ("big", 9000, Status.OK, 8_999_999_999_999_991_000),  # above 2**53: no float holds it
    ("big", 9_223, Status.OK, 9_222_999_999_999_990_777),
    ("max", 9_223, Status.OK, 9_223 * MAX_PRICE),
    ("max", 9_224, Status.OVERFLOW, 0),
    ("max", MAX_QUANTITY, Status.OVERFLOW, 0),
    ("apple", MAX_QUANTITY, Status.OK, 50 * MAX_QUANTITY),
    ("apple", MAX_QUANTITY + 1, Status.BAD_QUANTITY, 0),
]


def server(fast: bool) -> QuoteServer:
    return QuoteServer(Catalog.from_prices(PRICES), fast_path=fast)


def test_the_boundary_products_are_what_this_file_says() -> None:
    assert EXACT_UNIT * EXACT_QTY == MAX_TOTAL and POW_UNIT * POW_QTY == MAX_TOTAL + 1
    assert max(PRICES.values()) <= MAX_PRICE and EXACT_QTY <= MAX_QUANTITY
    big = 8_999_999_999_999_991_000
    assert big > 2**53 and int(float(big)) != big, "a float total would be wrong here"


@pytest.mark.parametrize("fast", [True, False], ids=["fast path", "general path"])
@pytest.mark.parametrize(("item", "quantity", "status", "total"), LINES)
def test_single_quote_at_the_limits(fast: bool, item: str, quantity: int, status: Status, total: int) -> None:
    core = server(fast)
    out = core.handle_datagram(encode_request(QuoteRequest(7, item, quantity, transmission=1)), ADDR, 0.0)
    assert out is not None
    reply = decode_reply(out)
    assert (reply.status, reply.unit_price, reply.total) == (status, PRICES[item], total)
    assert (reply.item, reply.quantity) == (item, quantity)


def test_fast_and_general_paths_both_ran() -> None:
    """The parametrised test above must exercise both paths, not the general one twice."""
    fast, general = server(True), server(False)
    request = encode_request(QuoteRequest(7, "exact", EXACT_QTY, transmission=1))
    assert fast.quote_fast(request, ADDR, 0.0) is not None, "MAX_TOTAL itself is in the fast path's range"
    assert fast.quote_fast(encode_request(QuoteRequest(7, "pow", POW_QTY, transmission=1)), ADDR, 0.0) is None
    assert general.handle_datagram(request, ADDR, 0.0) == fast.handle_datagram(request, ADDR, 0.0)


def test_batch_at_the_limits() -> None:
    core = server(True)
    lines = tuple((item, quantity) for item, quantity, _, _ in LINES)
    for start in range(0, len(lines), 8):  # within a batch's size, every line of the table
        chunk = lines[start : start + 8]
        out = core.handle_datagram(encode_batch_request(BatchRequest(9, chunk, transmission=1)), ADDR, 0.0)
        assert out is not None
        results = decode_batch_reply(out).results
        want = [(s, PRICES[i], t) for i, _, s, t in LINES[start : start + 8]]
        assert [(r.status, r.unit_price, r.total) for r in results] == want


def test_price_total_is_exact_up_to_the_bound_and_none_one_past_it() -> None:
    assert price_total(EXACT_UNIT, EXACT_QTY) == MAX_TOTAL
    assert price_total(POW_UNIT, POW_QTY) is None
    assert price_total(POW_UNIT, POW_QTY - 1) == MAX_TOTAL + 1 - POW_UNIT


def test_the_client_believes_max_total_and_refuses_one_more() -> None:
    assert line_violation(EXACT_QTY, LineResult(Status.OK, EXACT_UNIT, MAX_TOTAL)) is None
    assert line_violation(POW_QTY, LineResult(Status.OK, POW_UNIT, MAX_TOTAL + 1)) == "total_out_of_range"
    assert line_violation(POW_QTY, LineResult(Status.OVERFLOW, POW_UNIT)) is None
    assert line_violation(EXACT_QTY, LineResult(Status.OVERFLOW, EXACT_UNIT)) == "overflow_without_overflow"
    request = QuoteRequest(5, "exact", EXACT_QTY, transmission=1)
    at_limit = QuoteReply(5, Status.OK, "exact", EXACT_QTY, EXACT_UNIT, MAX_TOTAL, 1, 0, 1)
    assert decode_reply(encode_reply(at_limit)) == at_limit, "the u64 field carries MAX_TOTAL exactly"
    assert violation(request, 0, at_limit) is None


def test_money_text_is_exact_above_2_53() -> None:
    assert format_money(MAX_TOTAL) == "92233720368547758.07"
    assert format_money(8_999_999_999_999_991_000) == "89999999999999910.00"
    assert Decimal(format_money(MAX_TOTAL)) * 100 == MAX_TOTAL


def test_price_and_quantity_at_their_maxima() -> None:
    assert parse_price("10000000000000.00") == MAX_PRICE
    with pytest.raises(ValueError, match="above the maximum"):
        parse_price("10000000000000.01")
    assert parse_quantity(str(MAX_QUANTITY)) == MAX_QUANTITY
    with pytest.raises(BadQuantity):
        parse_quantity(str(MAX_QUANTITY + 1))
