"""The messages of the udp-price protocol as Python values: kinds, status codes and one frozen
dataclass per message. Byte layout: the root module ``wire_format``; codecs: ``codec`` (fast) and
``reference`` (construct, the test oracle)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from wire_format import BATCH_REPLY_FIXED, BATCH_REPLY_LINE, BATCH_REQUEST_FIXED, BATCH_REQUEST_LINE


class MessageKind(IntEnum):
    QUOTE_REQUEST = 1
    QUOTE_REPLY = 2
    BATCH_REQUEST = 3
    BATCH_REPLY = 4
    LIST_REQUEST = 5
    LIST_REPLY = 6


class Status(IntEnum):
    """Reply status codes. Values are stable on the wire; new ones are appended."""

    OK = 0
    UNKNOWN_ITEM = 1
    BAD_QUANTITY = 2
    OVERFLOW = 3
    UNSUPPORTED_VERSION = 4
    MALFORMED = 5
    BUSY = 6
    BAD_PAGE = 7


@dataclass(frozen=True, slots=True)
class QuoteRequest:
    """Ask for the price of ``quantity`` units of ``item``."""

    request_id: int
    item: str
    quantity: int
    transmission: int = 0
    """Which transmission of this request this datagram is, 1..MAX_TRANSMISSION (0: not numbered)."""


@dataclass(frozen=True, slots=True)
class QuoteReply:
    """Answer to a QuoteRequest; money in integer minor units (cents)."""

    request_id: int
    status: Status
    item: str
    quantity: int
    unit_price: int = 0
    total: int = 0
    catalog_version: int = 0
    retry_after_ms: int = 0
    transmission: int = 0
    """The transmission number of the request datagram this answers (echoed)."""


@dataclass(frozen=True, slots=True)
class BatchRequest:
    """Up to MAX_BATCH (item, quantity) lines in one datagram."""

    request_id: int
    lines: tuple[tuple[str, int], ...]
    transmission: int = 0


@dataclass(frozen=True, slots=True)
class LineResult:
    status: Status
    unit_price: int = 0
    total: int = 0


@dataclass(frozen=True, slots=True)
class BatchReply:
    """Per-line results in request order. A status other than OK applies to the whole batch,
    which then carries no results (MALFORMED, UNSUPPORTED_VERSION, BUSY)."""

    request_id: int
    status: Status
    lines_digest: int
    results: tuple[LineResult, ...] = ()
    catalog_version: int = 0
    retry_after_ms: int = 0
    transmission: int = 0


@dataclass(frozen=True, slots=True)
class ListRequest:
    """Ask for one page of the catalog (0-based), LIST_PAGE_SIZE items a page, sorted by name;
    with a ``prefix``, one page of the items whose name starts with it (a search)."""

    request_id: int
    page: int
    prefix: str = ""


@dataclass(frozen=True, slots=True)
class ListReply:
    """One page of (item, unit price in cents). ``pages`` is the page count of this catalog version."""

    request_id: int
    status: Status
    page: int
    pages: int
    entries: tuple[tuple[str, int], ...] = ()
    catalog_version: int = 0


def batch_request_size(count: int) -> int:
    return BATCH_REQUEST_FIXED + BATCH_REQUEST_LINE * count


def batch_reply_size(count: int) -> int:
    return BATCH_REPLY_FIXED + BATCH_REPLY_LINE * count


Request = QuoteRequest | BatchRequest | ListRequest
Reply = QuoteReply | BatchReply | ListReply

REQUEST_KINDS = frozenset({MessageKind.QUOTE_REQUEST, MessageKind.BATCH_REQUEST, MessageKind.LIST_REQUEST})
"""Kinds a server may answer. Kind numbers are stable across protocol versions (requests odd,
replies even); anything else, replies above all, is never answered, so no two peers can be made to
answer each other forever (the echo/chargen loop, CVE-1999-0103)."""
