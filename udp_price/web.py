"""A quote page in the browser, served on loopback: pick an item, enter a quantity, see the total.

The browser talks HTTP to this process; this process talks UDP to the quote server with the
same client core as the command line (timeouts, retransmission, request ids). The page is a
plain HTML form (GET), so it works with the keyboard, with screen readers and without
JavaScript; the item list comes from the server's catalog-listing messages.
"""

from __future__ import annotations

import html
import json
import sys
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from udp_price import web_search
from udp_price.address import Address, format_address
from udp_price.auth import Key
from udp_price.catalog import format_money
from udp_price.client.api import NoAnswer, describe_status
from udp_price.client.kept import KeptClient
from udp_price.client.retry import RetryPolicy
from udp_price.errors import BadQuantity, QuoteError
from udp_price.wire import Status, parse_quantity
from wire_format import MAX_QUANTITY

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 32rem; margin: 2rem auto; padding: 0 1rem; color: #1a1a1a; }
label { display: block; margin-top: 1rem; font-weight: 600; }
select, input, button { font-size: 1.1rem; padding: .4rem; margin-top: .3rem; }
button { margin-top: 1rem; }
:focus { outline: 3px solid #1d4ed8; outline-offset: 2px; }
.result { margin-top: 1.5rem; padding: 1rem; background: #ecfdf5; border: 1px solid #047857; }
.error { margin-top: 1.5rem; padding: 1rem; background: #fef2f2; border: 1px solid #b91c1c; }
.total { font-size: 1.6rem; font-weight: 700; }
"""


def render(
    server: Address,
    items: list[tuple[str, int]] | None,
    list_error: str | None,
    chosen: str = "",
    quantity: str = "1",
    result: dict[str, Any] | None = None,
    error: str | None = None,
    searchable: bool = False,
) -> str:
    """The whole page. ``items`` None means the catalog could not be listed (``list_error`` says why)."""
    esc = html.escape
    options = "".join(
        f'<option value="{esc(i)}"{" selected" if i == chosen else ""}>{esc(i)} ({format_money(p)})</option>'
        for i, p in items or []
    )
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>udp-price quote</title><style>{STYLE}</style></head><body><main>",
        "<h1>Get a price quote</h1>",
        f"<p>Quote server: <code>{esc(format_address(server))}</code> (UDP)</p>",
    ]
    if list_error:
        parts.append(f'<div class="error" role="alert" id="error">{esc(list_error)}</div>')
    disabled = "" if items or searchable else " disabled"
    parts += [
        '<form method="get" action="/">',
        '<label for="item">Item</label>',
        web_search.combobox(chosen, "")
        if searchable
        else f'<select id="item" name="item" required{disabled}>{options}</select>',
        '<label for="quantity">Quantity</label>',
        f'<input id="quantity" name="quantity" type="number" inputmode="numeric" min="1" max="{MAX_QUANTITY}" '
        f'step="1" required value="{esc(quantity)}"{disabled}>',
        f'<div><button type="submit" id="submit"{disabled}>Get quote</button></div>',
        "</form>",
    ]
    if result is not None:
        parts.append(
            '<section class="result" id="result" aria-live="polite"><h2>Quote</h2>'
            f'<p class="total" id="total">{result["quantity"]} x {esc(result["item"])} @ {result["unit_price"]} '
            f"= {result['total']}</p>"
            f'<p id="attempts">{result["attempts"]} attempt{"s" if result["attempts"] != 1 else ""}, '
            f"round trip {result['latency_ms']:.2f} ms</p></section>"
        )
    if error is not None:
        parts.append(f'<div class="error" role="alert" id="error">{esc(error)}</div>')
    parts.append("</main></body></html>")
    return "".join(parts)


@dataclass(frozen=True)
class PageError:
    """A failed quote: the HTTP status (the caller's mistake 4xx, the quote server's trouble 5xx),
    a machine-readable code for scripts, and the message in words for people."""

    status: HTTPStatus
    code: str
    message: str


_BY_STATUS = {
    Status.UNKNOWN_ITEM: (HTTPStatus.NOT_FOUND, "unknown_item"),
    Status.BAD_QUANTITY: (HTTPStatus.BAD_REQUEST, "bad_quantity"),
    Status.OVERFLOW: (HTTPStatus.BAD_REQUEST, "total_too_large"),
    Status.BUSY: (HTTPStatus.SERVICE_UNAVAILABLE, "busy"),
}


def no_answer_message(e: NoAnswer) -> str:
    return f"The quote server is unreachable: no answer after {e.attempts} attempt(s) in {e.elapsed_s:.1f} s."


def quote_for_page(client: KeptClient, item: str, quantity_text: str) -> tuple[dict[str, Any] | None, PageError | None]:
    """(result, None) or (None, what went wrong) for one form submission."""
    try:
        quantity = parse_quantity(quantity_text)  # the one quantity rule, as for quote and bulk
    except BadQuantity:
        shown = quantity_text if len(quantity_text) <= 20 else quantity_text[:20] + "..."
        message = f"Bad quantity {shown!r}: enter a whole number from 1 to {MAX_QUANTITY:,}."
        return None, PageError(HTTPStatus.BAD_REQUEST, "bad_quantity", message)
    try:
        r = client.quote(item, quantity)
    except NoAnswer as e:
        return None, PageError(HTTPStatus.GATEWAY_TIMEOUT, "no_answer", no_answer_message(e))
    except ValueError as e:  # cannot be encoded: the caller's item (too long for the wire field, ...)
        return None, PageError(HTTPStatus.BAD_REQUEST, "bad_item", f"Cannot ask for that: {e}.")
    except QuoteError as e:
        return None, PageError(HTTPStatus.BAD_GATEWAY, "bad_reply", f"The quote server's answer was unusable: {e}.")
    if not r.ok:
        status, code = _BY_STATUS.get(r.status, (HTTPStatus.BAD_GATEWAY, r.status.name.lower()))
        return None, PageError(status, code, describe_status(r).capitalize() + ".")
    return r.as_json(), None


def _listing_error(e: NoAnswer | QuoteError) -> PageError:
    if isinstance(e, NoAnswer):
        return PageError(HTTPStatus.GATEWAY_TIMEOUT, "no_answer", no_answer_message(e))
    return PageError(HTTPStatus.BAD_GATEWAY, "bad_reply", f"Cannot list the catalog: {e}.")


def _search_error(e: Exception) -> PageError:
    """A bad search text (NUL, over 32 bytes) is the caller's mistake: 400 bad_prefix; a quote
    server that did not answer or answered badly is 504 / 502, as for listing."""
    if isinstance(e, (NoAnswer, QuoteError)) and not isinstance(e, ValueError):
        return _listing_error(e)
    return PageError(HTTPStatus.BAD_REQUEST, "bad_prefix", f"Cannot search for that: {e}.")


class Handler(BaseHTTPRequestHandler):
    server_address_udp: Address
    client: KeptClient

    def do_HEAD(self) -> None:
        """The GET answer's status and headers without its body (RFC 9110 9.3.2)."""
        self._head_only = True
        self.do_GET()

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/":
            self._page(query)
        elif url.path == "/api/search":
            self._api_search(query.get("q", ""))
        elif url.path == "/api/items":
            self._api_items()
        elif url.path == "/api/quote":
            result, error = quote_for_page(self.client, query.get("item", ""), query.get("quantity", ""))
            if error is not None:
                self._send_error(error)
            else:
                self._send(HTTPStatus.OK, "application/json", json.dumps(result, ensure_ascii=False))
        elif url.path == "/api/client":
            self._api_client()
        else:
            self._send_error(PageError(HTTPStatus.NOT_FOUND, "not_found", f"No page at {url.path[:100]}."))

    def _items(self) -> tuple[list[tuple[str, int]] | None, PageError | None]:
        try:
            return self.client.list_items()[1], None
        except (NoAnswer, QuoteError) as e:
            return None, _listing_error(e)

    def _page(self, query: dict[str, str]) -> None:
        items, failure, searchable = web_search.small_catalog(self.client.list_items)
        list_error = _listing_error(failure) if failure is not None else None
        result = error = None
        # A dead quote server gets one message: the quote is not tried when listing found no one there.
        if "item" in query and not (list_error is not None and list_error.code == "no_answer"):
            result, error = quote_for_page(self.client, query["item"], query.get("quantity", ""))
        page = render(
            self.server_address_udp,
            items,
            list_error.message if list_error else None,
            query.get("item", ""),
            query.get("quantity", "1"),
            result,
            error.message if error else None,
            searchable,
        )
        self._send(HTTPStatus.OK, "text/html; charset=utf-8", page)

    def _api_items(self) -> None:
        items, error = self._items()
        if error is not None:
            self._send_error(error)
            return
        body = [{"item": i, "unit_price": format_money(p)} for i, p in items or []]
        self._send(HTTPStatus.OK, "application/json", json.dumps(body, ensure_ascii=False))

    def _api_search(self, text: str) -> None:
        found, failure = web_search.search(self.client.list_items, text)
        if failure is not None:
            self._send_error(_search_error(failure))
            return
        self._send(HTTPStatus.OK, "application/json", json.dumps(found, ensure_ascii=False))

    def _api_client(self) -> None:
        """The kept UDP client: its local port and what it has learned of the round trip."""
        rtt = self.client.client.rtt
        body = {
            "server": format_address(self.client.server),
            "local_port": self.client.local_port(),
            "srtt_ms": None if rtt.srtt is None else round(rtt.srtt * 1000, 3),
            "sent": self.client.client.stats.get("sent", 0),
            "accepted": self.client.client.stats.get("accepted", 0),
        }
        self._send(HTTPStatus.OK, "application/json", json.dumps(body))

    def _send_error(self, error: PageError) -> None:
        body = json.dumps({"error": error.message, "code": error.code}, ensure_ascii=False)
        retry = {"Retry-After": "1"} if error.status is HTTPStatus.SERVICE_UNAVAILABLE else {}
        self._send(error.status, "application/json", body, retry)

    def _send(self, status: HTTPStatus, content_type: str, body: str, extra: dict[str, str] | None = None) -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not getattr(self, "_head_only", False):
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"udp_client web: {self.address_string()} {format % args}\n")


def make_server(listen: Address, server: Address, client: KeptClient) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"server_address_udp": server, "client": client})
    return ThreadingHTTPServer(listen, handler)


def serve(listen: Address, server: Address, policy: RetryPolicy, key: Key | None = None) -> int:
    """Serve the page until Ctrl-C or SIGTERM; 0 on a clean stop, 5 if the address is taken."""
    import signal

    client = KeptClient(server, policy, key)
    try:
        httpd = make_server(listen, server, client)
    except OSError as e:
        client.close()
        print(f"udp_client: cannot listen on {format_address(listen)}: {e.strerror}", file=sys.stderr)
        return 5
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    host, port = httpd.server_address[:2]
    print(
        f"udp_client: quote page on http://{format_address((str(host), int(port)))}/ "
        f"(quote server {format_address(server)})",
        flush=True,
    )
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
        client.close()
    return 0
