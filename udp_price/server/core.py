"""The server's pure core: ``QuoteServer.handle_datagram(data, addr, now)``.

Bytes in, bytes (or None) out, counters kept. No sockets, no clock (``now`` is passed in), no
logging: the shells in ``udp_price.server.loop`` and ``udp_price.server.ops`` do the I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from udp_price.address import Address
from udp_price.auth import ServerAuth, is_signed, sign
from udp_price.catalog import Catalog, wire_limit_problems
from udp_price.reflectors import REFLECTOR_PORTS
from udp_price.server.answers import busy_reply, price_line, quote_reply
from udp_price.server.guards import RateLimiter, ReplyCache, Verdict
from udp_price.wire import (
    FLAG_OVERLOADED,
    KIND_OFFSET,
    REPLY_STATUS_OFFSET,
    REQUEST_KINDS,
    BatchReply,
    BatchRequest,
    LineResult,
    ListReply,
    ListRequest,
    MalformedDatagram,
    MessageKind,
    QuoteReply,
    QuoteRequest,
    Reply,
    Request,
    Status,
    batch_request_fields,
    decode_any_request,
    encode_batch_reply,
    encode_list_reply,
    encode_ok_batch_reply,
    encode_ok_reply,
    encode_reply,
    is_sealed,
    kind_of,
    lines_digest,
    peek_batch_request,
    peek_header,
    peek_quote_request,
)
from wire_format import AUTH_FLAG, LIST_PAGE_SIZE, MAX_QUANTITY, MAX_TOTAL, VERSION

_STATUS_KEY_BY_VALUE = {int(status): f"status.{status.name}" for status in Status}
_ENCODERS: dict[type, Callable[[Any, int], bytes]] = {
    QuoteReply: encode_reply,
    BatchReply: encode_batch_reply,
    ListReply: encode_list_reply,
}


@dataclass
class QuoteServer:
    """The pure core: bytes in, bytes (or None) out, counters kept.

    ``limiter`` and ``cache`` are optional guards (see udp_price.server.guards); both are driven by the
    ``now`` passed in, never by a clock of their own.
    """

    catalog: Catalog
    limiter: RateLimiter | None = None
    cache: ReplyCache | None = None
    stats: Counter[str] = field(default_factory=Counter)
    fast_path: bool = True
    """Answer plain quotes for known items through quote_fast (same bytes, same counters, ~5x less
    work); False sends everything through the general path, which the equivalence tests compare with."""
    auth: ServerAuth | None = None
    """With keys (--keys): every request is verified before anything else (see _authenticated);
    None: no keys, and a signed request is dropped (counted auth.dropped.no_keys), never answered unsigned."""
    overloaded: bool = False
    """Set by the serving loop once per wake-up (udp_price.server.overload): while True, every reply
    built carries the OVERLOADED flag (0x40), set by the encoder in the kind byte as the reply is
    built, so it costs no second copy and, with keys, the tag covers it. Replies to a source near
    its rate limit carry it whatever this says."""

    def __post_init__(self) -> None:
        self.set_catalog(self.catalog)

    def handle_datagram(self, data: bytes, addr: Address, now: float) -> bytes | None:
        """The reply to send back to ``addr``, or None to stay silent.

        Never raises on remote input: garbage is counted under ``malformed.<reason>``.
        ``now`` is seconds on a monotonic clock. Every reply leaves through ``_checked``.
        """
        self.stats["requests"] += 1
        if self.auth is not None:
            return self._authenticated(self.auth, data, addr, now)
        if is_signed(data):
            # No keys here: answering unsigned would be a silent downgrade, and the client would
            # refuse it anyway. Silence; the client reports that no authenticated reply came. To a
            # server without keys it is a kind it does not answer (refused.not_a_request), and
            # auth.dropped.no_keys tells the operator a keyed client is knocking.
            self.stats["auth.dropped.no_keys"] += 1
            self.stats["refused.not_a_request"] += 1
            return None
        return self._checked(data, self._respond(data, addr, now))

    def _authenticated(self, auth: ServerAuth, data: bytes, addr: Address, now: float) -> bytes | None:
        """With keys, verification comes first: before the reflector-port check, the rate limiter,
        the reply cache and any status reply, so a datagram without a valid tag (or replayed, or
        outside the time window) never causes a reply nor costs a real client anything."""
        if len(data) <= KIND_OFFSET or not data[KIND_OFFSET] & AUTH_FLAG:  # is_signed, inlined: per datagram
            if auth.allow_anonymous:
                return self._checked(data, self._respond(data, addr, now))
            self.stats["auth.dropped.anonymous"] += 1
            return None
        opened = auth.admit(data, now)
        if isinstance(opened, str):
            self.stats["auth.dropped." + opened] += 1
            return None
        inner, key = opened
        self.stats["auth.verified"] += 1
        # No reply cache: it serves only a byte-identical request, and an identical signed request
        # is a replay (dropped above) while a retransmission is signed afresh with a new
        # transmission number. Storing replies that can never be served cost ~2 us per datagram.
        reply = self._checked(inner, self._respond(inner, addr, now, cached=False))
        if reply is None:
            return None
        out = sign(reply, key, int((now + auth.wall_offset_s) * 1000))  # auth.sign_reply, inlined
        # The plain reply is no larger than the plain request, and both gain the same trailer; checked anyway.
        # (So the counter below is unreachable, and a mutant of it cannot be told from it.)
        if len(out) > len(data):
            self.stats["dropped.amplification"] += 1  # pragma: no mutate
            return None
        return out

    def _checked(self, data: bytes, out: bytes | None) -> bytes | None:
        """The one place every outgoing datagram passes, cached or fresh, error or answer: it is
        never larger than the request that caused it (no amplification toward a spoofed source)."""
        if out is None:
            return None
        if len(out) > len(data):
            self.stats["dropped.amplification"] += 1
            return None
        stats = self.stats
        stats["replies"] += 1
        stats[_STATUS_KEY_BY_VALUE.get(out[REPLY_STATUS_OFFSET], "status.unknown")] += 1
        if out[KIND_OFFSET] & FLAG_OVERLOADED:
            stats["overload.marked"] += 1
        return out

    def _respond(self, data: bytes, addr: Address, now: float, cached: bool = True) -> bytes | None:
        if addr[1] in REFLECTOR_PORTS:
            # Checked before the rate limiter, so these cost no tokens of a real client behind the same IP.
            self.stats["refused.source_port"] += 1
            return None
        if self.limiter is not None and not self.limiter.knows(addr[0]) and not is_sealed(data):
            # Unsealed bytes are never answered; from a source the limiter does not know yet they
            # are dropped before they can draw on the newcomers' pool (junk must not lock out
            # new clients). Known sources go on paying their own bucket, as before.
            self._count_unanswerable(data)
            return None
        verdict = self.limiter.check(addr[0], now) if self.limiter is not None else Verdict.ALLOW
        if verdict is Verdict.DROP:
            self.stats["rate_limited.dropped"] += 1
            return None
        # The mark is decided here, before any reply is encoded (and signed): the server is
        # overloaded (this wake-up), or this source is close to its rate limit (the check above).
        flags = FLAG_OVERLOADED if self.overloaded or (self.limiter is not None and self.limiter.near_limit) else 0
        if self.fast_path and verdict is Verdict.ALLOW:
            out = self.quote_fast(data, addr, now, cached, flags) or self.batch_fast(data, addr, now, cached, flags)
            if out is not None:
                return out
        try:
            request = decode_any_request(data)
        except MalformedDatagram as e:
            self.stats[f"malformed.{e.reason}"] += 1
            return self._encoded(self._error_reply(e, data) if verdict is Verdict.ALLOW else None, flags)
        if verdict is Verdict.SLIP:
            self.stats["rate_limited.busy"] += 1
            assert self.limiter is not None
            retry_ms = self.limiter.retry_after_ms(addr[0])
            return self._encoded(busy_reply(request, data, retry_ms, self.catalog.version), flags)
        key = (addr[0], addr[1], request.request_id)
        cache = self.cache if cached else None
        if cache is not None:
            # A replay is the reply as first sent, its mark (or none) included (see ReplyCache).
            stored = cache.get(key, data, now)
            if stored is not None:
                self.stats["cache_hits"] += 1
                return stored
        out = self._encoded(self.answer(request, data), flags)
        # List pages are not cached: they are 670 bytes each (a full listing of a big catalog would
        # fill the cache with them), a retransmitted list request is answered again for the same
        # cost, and a client never mixes pages of two catalog versions anyway.
        if out is not None and cache is not None and len(out) <= len(data) and not isinstance(request, ListRequest):
            cache.put(key, data, out, now)
        return out

    def _count_unanswerable(self, data: bytes) -> None:
        try:
            decode_any_request(data)
        except MalformedDatagram as e:
            self.stats[f"malformed.{e.reason}"] += 1
        return None

    def quote_fast(self, data: bytes, addr: Address, now: float, cached: bool = True, flags: int = 0) -> bytes | None:
        """The common case, profiled at ~2 us instead of ~10: an intact single quote request whose
        item field is byte-identical to a catalog item's and whose total is in range. Returns None
        for anything else, before counting anything, and the general path then handles it.
        ``flags``: FLAG_OVERLOADED or 0, for the kind byte of the reply."""
        peeked = peek_quote_request(data)
        if peeked is None:
            return None
        request_id, item_field, quantity, transmission = peeked
        catalog = self.catalog
        unit = catalog.price_of_field(item_field)
        if unit is None or not 1 <= quantity <= MAX_QUANTITY or unit * quantity > MAX_TOTAL:
            return None
        cache = self.cache if cached else None
        if cache is None:
            return encode_ok_reply(
                request_id, item_field, quantity, unit, unit * quantity, catalog.version, transmission, flags
            )
        key = (addr[0], addr[1], request_id)
        stored = cache.get(key, data, now)
        if stored is not None:
            self.stats["cache_hits"] += 1
            return stored
        out = encode_ok_reply(
            request_id, item_field, quantity, unit, unit * quantity, catalog.version, transmission, flags
        )
        if len(out) <= len(data):
            cache.put(key, data, out, now)
        return out

    def batch_fast(self, data: bytes, addr: Address, now: float, cached: bool = True, flags: int = 0) -> bytes | None:
        """quote_fast for an intact batch request whose every line is plain (item field
        byte-identical to a catalog item's, total in range): no decoding to names, no per-line
        objects, one pack. Returns None for anything else, before counting anything."""
        peeked = peek_batch_request(data)
        if peeked is None:
            return None
        request_id, transmission, lines = peeked
        catalog, ok = self.catalog, int(Status.OK)
        price_of_field = catalog.index.price_of_field  # one call a line less than catalog.price_of_field
        values: list[int] = []
        for quantity, item_field in lines:
            unit = price_of_field(item_field)
            if unit is None or not 1 <= quantity <= MAX_QUANTITY or unit * quantity > MAX_TOTAL:
                return None
            values += (ok, unit, unit * quantity)
        key = (addr[0], addr[1], request_id)
        cache = self.cache if cached else None  # a signed request's reply is never replayed
        if cache is not None:
            stored = cache.get(key, data, now)
            if stored is not None:
                self.stats["cache_hits"] += 1
                return stored
        self.stats["batch_lines"] += len(lines)
        out = encode_ok_batch_reply(
            request_id, len(lines), catalog.version, lines_digest(data), transmission, values, flags
        )
        if cache is not None and len(out) <= len(data):
            cache.put(key, data, out, now)
        return out

    def _encoded(self, reply: Reply | None, flags: int = 0) -> bytes | None:
        """The bytes of ``reply`` with ``flags`` in its kind byte; None (silence, counted) if there is none."""
        if reply is None:
            self.stats["dropped"] += 1
            return None
        return _ENCODERS[type(reply)](reply, flags)

    def answer(self, request: Request, data: bytes) -> Reply:
        """The reply to a well-formed request of any kind."""
        if isinstance(request, QuoteRequest):
            return self.quote(request)
        if isinstance(request, BatchRequest):
            return self.quote_batch(request, data)
        return self.list_page(request)

    def list_page(self, request: ListRequest) -> ListReply:
        """One page of the catalog (or of the items whose name starts with the request's prefix),
        sorted by name; BAD_PAGE past the end. A prefix nothing matches has one empty page."""
        catalog = self.catalog  # one catalog for the whole answer, even if a reload swaps meanwhile
        start, stop = catalog.prefix_range(request.prefix.encode("utf-8"))
        pages = max(1, -(-(stop - start) // LIST_PAGE_SIZE))
        if request.page >= pages:
            return ListReply(request.request_id, Status.BAD_PAGE, request.page, pages, catalog_version=catalog.version)
        first = start + request.page * LIST_PAGE_SIZE
        chunk = tuple(catalog.entries(first, min(first + LIST_PAGE_SIZE, stop)))
        return ListReply(request.request_id, Status.OK, request.page, pages, chunk, catalog.version)

    def set_catalog(self, catalog: Catalog) -> None:
        """Swap in a new, already validated catalog; requests after this see only the new one.

        Raises ValueError for a catalog the wire cannot carry (load_catalog never returns one):
        better refused here than met by the first list request."""
        problems = wire_limit_problems(catalog.prices)
        if problems:
            raise ValueError("; ".join(problems))
        self.swap_catalog(catalog.prepared())

    def swap_catalog(self, prepared: Catalog) -> None:
        """Swap in a catalog already validated and prepared (off the serving thread, by the reload
        worker): one reference assignment, so a datagram sees the old catalog or the new, never a mix."""
        self.catalog = prepared

    def price(self, item: str, quantity: int) -> LineResult:
        """Price one line against the current catalog: exact integer cents."""
        return price_line(self.catalog, item, quantity)

    def quote(self, request: QuoteRequest) -> QuoteReply:
        """Answer a well-formed single quote request."""
        return quote_reply(self.catalog, request)

    def quote_batch(self, request: BatchRequest, data: bytes) -> BatchReply:
        """Answer a well-formed batch request, one result per line in order."""
        self.stats["batch_lines"] += len(request.lines)
        results = tuple(self._batch_prices(request, data))
        return BatchReply(
            request.request_id,
            Status.OK,
            lines_digest(data),
            results,
            self.catalog.version,
            transmission=request.transmission,
        )

    def _batch_prices(self, request: BatchRequest, data: bytes) -> list[LineResult]:
        """``price`` of each line. A line whose item field is byte-identical to a catalog item's
        (nearly all) is priced by that field, as quote_fast does: a dict hit instead of the search
        by name that made a batch of 32 cost 40 single quotes; any other line goes through ``price``."""
        catalog, ok, results = self.catalog, Status.OK, []
        for (quantity, item_field), (item, _) in zip(batch_request_fields(data), request.lines, strict=True):
            unit = catalog.price_of_field(item_field)
            if unit is not None and 1 <= quantity <= MAX_QUANTITY and unit * quantity <= MAX_TOTAL:
                results.append(LineResult(ok, unit, unit * quantity))
            else:
                results.append(self.price(item, quantity))
        return results

    def _error_reply(self, error: MalformedDatagram, data: bytes) -> Reply | None:
        """Answer only when the sender can be told something useful and the header is trustworthy."""
        request_id = error.request_id
        version_ok = True
        if request_id is None:
            # Another protocol version may use another length; its 12-byte header and trailing CRC32
            # are shared by all versions and tell us whom to answer (_checked keeps it from amplifying).
            # peek_header checks the version-independent seal (CRC32) first: a datagram of our
            # version with a flipped version byte fails it and is dropped, never told UNSUPPORTED_VERSION.
            header = peek_header(data)
            if header is None or header[0] == VERSION:
                return None
            request_id, version_ok = header[1], False
        kind = kind_of(data)
        if kind not in REQUEST_KINDS:
            # Replies (and unknown kinds) are never answered, however intact: answering a reply
            # lets one spoofed datagram start an endless exchange between two peers (or with itself).
            self.stats["refused.not_a_request"] += 1
            return None
        status = (
            Status.UNSUPPORTED_VERSION
            if error.reason == "unsupported_version" or not version_ok
            else (Status.MALFORMED)
        )
        if kind == MessageKind.BATCH_REQUEST:
            # The lines digest binds even a whole-batch error to the request (a client ignores one without it).
            return BatchReply(request_id, status, lines_digest(data), catalog_version=self.catalog.version)
        if kind == MessageKind.LIST_REQUEST:
            return ListReply(request_id, status, 0, 0, catalog_version=self.catalog.version)
        return QuoteReply(request_id, status, "", 0, catalog_version=self.catalog.version)

    def counters(self) -> dict[str, int]:
        """Every counter, the guards' included."""
        out = dict(self.stats)
        if self.cache is not None:
            out["cache_evictions"] = self.cache.evictions
        if self.limiter is not None and self.limiter.newcomers_refused:
            out["rate_limited.new_sources_refused"] = self.limiter.newcomers_refused
        return out

    def summary(self) -> str:
        """Counters as one line, stable order."""
        return " ".join(f"{k}={v}" for k, v in sorted(self.counters().items()))
