"""Every invariant a client can check on a reply before believing it (pure, no I/O).

A reply that passed its CRC32 and carries an outstanding request id may still be wrong: a
buggy or lying server, or a forger who knows the id. ``violation(request, digest, reply)``
returns why a reply cannot be the answer to ``request`` (a short tag, used as a counter
name), or None when every check passes. The session ignores a violating reply, counts it
and keeps waiting, so a lying server yields an explicit failure, never a wrong total.
"""

from __future__ import annotations

from udp_price.wire import (
    BatchReply,
    BatchRequest,
    LineResult,
    ListReply,
    ListRequest,
    QuoteReply,
    QuoteRequest,
    Reply,
    Request,
    Status,
)
from wire_format import MAX_QUANTITY, MAX_TOTAL

UNREADABLE = frozenset({Status.MALFORMED, Status.UNSUPPORTED_VERSION})
"""The server could not read the request, so it echoes nothing of it."""
LINE_STATUSES = frozenset({Status.OK, Status.UNKNOWN_ITEM, Status.BAD_QUANTITY, Status.OVERFLOW})
QUOTE_STATUSES = LINE_STATUSES | UNREADABLE | {Status.BUSY}
WHOLE_BATCH_STATUSES = UNREADABLE | {Status.BUSY}
LIST_STATUSES = frozenset({Status.OK, Status.BAD_PAGE, Status.BUSY}) | UNREADABLE


def line_violation(quantity: int, line: LineResult) -> str | None:
    """Is ``line`` a possible price for ``quantity`` units? Totals are recomputed exactly."""
    in_range = 1 <= quantity <= MAX_QUANTITY
    product = line.unit_price * quantity
    if line.status is Status.OK:
        if not in_range:
            return "ok_for_bad_quantity"
        if line.total != product:
            return "total_not_price_times_quantity"
        if line.total > MAX_TOTAL:
            return "total_out_of_range"
        return None
    if line.total != 0:
        return "total_on_error"
    if line.status is Status.BAD_QUANTITY:
        return None if not in_range else "bad_quantity_for_good_quantity"
    if line.status is Status.OVERFLOW:
        return None if in_range and product > MAX_TOTAL else "overflow_without_overflow"
    if line.status is Status.UNKNOWN_ITEM:
        return None if line.unit_price == 0 else "price_for_unknown_item"
    return "status_not_valid_for_line"


def violation(request: Request, digest: int, reply: Reply) -> str | None:
    """Why ``reply`` cannot answer ``request`` (``digest``: lines_digest of the request datagram, 0 if
    not a batch), or None when it is acceptable."""
    if isinstance(request, QuoteRequest):
        return _quote_violation(request, reply)
    if isinstance(request, BatchRequest):
        return _batch_violation(request, digest, reply)
    return _list_violation(request, reply)


def _quote_violation(request: QuoteRequest, reply: Reply) -> str | None:
    if not isinstance(reply, QuoteReply):
        return "wrong_kind"
    if reply.status not in QUOTE_STATUSES:
        return "status_not_valid_for_kind"
    if reply.status in UNREADABLE:
        return None if (reply.item, reply.quantity, reply.total) == ("", 0, 0) else "echo_on_unreadable"
    if (reply.item, reply.quantity) != (request.item, request.quantity):
        return "echo_mismatch"
    if reply.status is Status.BUSY:
        return None if reply.total == 0 else "total_on_error"
    return line_violation(request.quantity, LineResult(reply.status, reply.unit_price, reply.total))


def _batch_violation(request: BatchRequest, digest: int, reply: Reply) -> str | None:
    if not isinstance(reply, BatchReply):
        return "wrong_kind"
    if reply.lines_digest != digest:
        return "lines_digest_mismatch"
    if reply.status is not Status.OK:
        if reply.status not in WHOLE_BATCH_STATUSES:
            return "status_not_valid_for_kind"
        return None if not reply.results else "results_on_error"
    if len(reply.results) != len(request.lines):
        return "line_count_mismatch"
    for (_, quantity), line in zip(request.lines, reply.results, strict=True):
        if line.status not in LINE_STATUSES:
            return "status_not_valid_for_line"
        why = line_violation(quantity, line)
        if why is not None:
            return why
    return None


def _list_violation(request: ListRequest, reply: Reply) -> str | None:
    if isinstance(reply, QuoteReply):
        # A server older than list messages reads a list request as a broken quote request.
        ok = reply.status in UNREADABLE and reply.item == ""
        return None if ok else "wrong_kind"
    if not isinstance(reply, ListReply):
        return "wrong_kind"
    if reply.status not in LIST_STATUSES:
        return "status_not_valid_for_kind"
    if reply.status is Status.OK:
        return None if reply.page == request.page and reply.page < reply.pages else "page_mismatch"
    return None if not reply.entries else "entries_on_error"


def transmission_violation(request: Request, sent: int, tx: int) -> str | None:
    """A reply must echo a transmission that went out (``sent`` so far; ``tx``: the one it
    names); only list pages are unnumbered (0)."""
    if tx <= sent and (tx > 0 or isinstance(request, ListRequest)):
        return None
    return "transmission_not_sent"


def predates_lists(request: Request, reply: Reply) -> bool:
    """A quote reply to a list request: a server older than list messages; that is final."""
    return isinstance(request, ListRequest) and isinstance(reply, QuoteReply)
