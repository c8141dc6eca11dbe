"""Tests written to kill mutants that survived scripts/mutate.sh in the client's reply checks: the
tag each violation of a quote reply is counted under (the session counts ignored.invalid.<tag>)."""

from __future__ import annotations

from typing import Any

import pytest

from udp_price.client.reply_checks import transmission_violation, violation
from udp_price.wire import BatchReply, ListReply, ListRequest, QuoteReply, QuoteRequest, Status

ASK = QuoteRequest(9, "apple", 3)


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        (QuoteReply(9, Status.OK, "apple", 3, 50, 150), None),
        (BatchReply(9, Status.OK, 0), "wrong_kind"),
        (ListReply(9, Status.OK, 0, 1), "wrong_kind"),
        (QuoteReply(9, Status.BAD_PAGE, "apple", 3), "status_not_valid_for_kind"),
        (QuoteReply(9, Status.MALFORMED, "", 0), None),
        (QuoteReply(9, Status.UNSUPPORTED_VERSION, "", 0), None),
        (QuoteReply(9, Status.MALFORMED, "apple", 0), "echo_on_unreadable"),
        (QuoteReply(9, Status.MALFORMED, "", 3), "echo_on_unreadable"),
        (QuoteReply(9, Status.MALFORMED, "", 0, 0, 150), "echo_on_unreadable"),
        (QuoteReply(9, Status.OK, "pear", 3, 50, 150), "echo_mismatch"),
        (QuoteReply(9, Status.OK, "apple", 4, 50, 200), "echo_mismatch"),
        (QuoteReply(9, Status.BUSY, "apple", 3), None),
        (QuoteReply(9, Status.BUSY, "apple", 3, 0, 150), "total_on_error"),
        (QuoteReply(9, Status.OK, "apple", 3, 50, 151), "total_not_price_times_quantity"),
    ],
)
def test_quote_reply_checks_name_each_violation(reply: Any, why: str | None) -> None:
    """A reply that breaks a check is ignored and counted under its tag: operators read the counter."""
    assert violation(ASK, 0, reply) == why


@pytest.mark.parametrize(
    ("request_", "sent", "tx", "expected"),
    [
        (QuoteRequest(1, "apple", 1), 1, 1, None),
        (QuoteRequest(1, "apple", 1), 2, 2, None),
        (QuoteRequest(1, "apple", 1), 1, 2, "transmission_not_sent"),  # names one not yet sent
        (QuoteRequest(1, "apple", 1), 1, 0, "transmission_not_sent"),  # a quote reply is numbered
        (ListRequest(1, 0), 1, 0, None),  # list pages are not numbered
        (ListRequest(1, 0), 1, 2, "transmission_not_sent"),
    ],
)
def test_a_reply_must_echo_a_transmission_that_went_out(
    request_: QuoteRequest | ListRequest, sent: int, tx: int, expected: str | None
) -> None:
    assert transmission_violation(request_, sent, tx) == expected
