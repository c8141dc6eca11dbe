"""The replies the server builds from a well-formed request and its catalog (pure): a priced
line, a single quote's reply, and the BUSY reply of a source over its rate."""

from __future__ import annotations

from udp_price.catalog import Catalog, price_total
from udp_price.wire import (
    BatchReply,
    LineResult,
    ListReply,
    ListRequest,
    QuoteReply,
    QuoteRequest,
    Reply,
    Request,
    Status,
    lines_digest,
)
from wire_format import MAX_QUANTITY, MAX_RETRY_AFTER_MS


def price_line(catalog: Catalog, item: str, quantity: int) -> LineResult:
    """Price one line against ``catalog``: exact integer cents."""
    unit = catalog.prices.get(item)
    if unit is None:
        return LineResult(Status.UNKNOWN_ITEM)
    if not 1 <= quantity <= MAX_QUANTITY:
        return LineResult(Status.BAD_QUANTITY, unit)
    total = price_total(unit, quantity)
    if total is None:
        return LineResult(Status.OVERFLOW, unit)
    return LineResult(Status.OK, unit, total)


def quote_reply(catalog: Catalog, request: QuoteRequest) -> QuoteReply:
    """The reply to a well-formed single quote request."""
    line = price_line(catalog, request.item, request.quantity)
    return QuoteReply(
        request_id=request.request_id,
        status=line.status,
        item=request.item,
        quantity=request.quantity,
        unit_price=line.unit_price,
        total=line.total,
        catalog_version=catalog.version,
        transmission=request.transmission,
    )


def busy_reply(request: Request, data: bytes, retry_after_ms: int, catalog_version: int) -> Reply:
    """BUSY to a request of any kind: come back in ``retry_after_ms`` (at most what the wire carries)."""
    retry = min(retry_after_ms, MAX_RETRY_AFTER_MS)
    if isinstance(request, ListRequest):
        return ListReply(request.request_id, Status.BUSY, request.page, 0, catalog_version=catalog_version)
    if isinstance(request, QuoteRequest):
        return QuoteReply(
            request.request_id,
            Status.BUSY,
            request.item,
            request.quantity,
            catalog_version=catalog_version,
            retry_after_ms=retry,
            transmission=request.transmission,
        )
    return BatchReply(
        request.request_id,
        Status.BUSY,
        lines_digest(data),
        catalog_version=catalog_version,
        retry_after_ms=retry,
        transmission=request.transmission,
    )
