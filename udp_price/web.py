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
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from udp_price import web_search
from udp_price.address import Address, format_address
from udp_price.catalog import format_money
from udp_price.client.api import NoAnswer, describe_status, list_once, quote_once
from udp_price.client.retry import RetryPolicy
from udp_price.errors import BadQuantity, QuoteError
from udp_price.wire import parse_quantity
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


def quote_for_page(
    server: Address, policy: RetryPolicy, item: str, quantity_text: str
) -> tuple[dict[str, Any] | None, str | None]:
    """(result, None) or (None, error in words) for one form submission."""
    try:
        quantity = parse_quantity(quantity_text)  # the one quantity rule, as for quote and bulk
    except BadQuantity:
        shown = quantity_text if len(quantity_text) <= 20 else quantity_text[:20] + "..."
        return None, f"Bad quantity {shown!r}: enter a whole number from 1 to {MAX_QUANTITY:,}."
    try:
        r = quote_once(server, item, quantity, policy)
    except NoAnswer as e:
        return None, f"The quote server is unreachable: no answer after {e.attempts} attempt(s) in {e.elapsed_s:.1f} s."
    except (ValueError, QuoteError) as e:
        return None, f"Cannot ask for that: {e}."
    if not r.ok:
        return None, describe_status(r).capitalize() + "."
    return r.as_json(), None


class Handler(BaseHTTPRequestHandler):
    server_address_udp: Address
    policy: RetryPolicy

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/":
            self._page(query)
        elif url.path == "/api/search":
            found, search_error = web_search.search(self.server_address_udp, self.policy, query.get("q", ""))
            self._send(
                HTTPStatus.OK if found is not None else HTTPStatus.BAD_GATEWAY,
                "application/json",
                json.dumps(found if found is not None else {"error": search_error}, ensure_ascii=False),
            )
        elif url.path == "/api/items":
            self._api_items()
        elif url.path == "/api/quote":
            result, error = quote_for_page(
                self.server_address_udp, self.policy, query.get("item", ""), query.get("quantity", "")
            )
            self._send(
                HTTPStatus.OK if result else HTTPStatus.BAD_GATEWAY,
                "application/json",
                json.dumps(result or {"error": error}, ensure_ascii=False),
            )
        else:
            self._send(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", "not found\n")

    def _items(self) -> tuple[list[tuple[str, int]] | None, str | None]:
        try:
            return list_once(self.server_address_udp, self.policy)[1], None
        except NoAnswer as e:
            return None, (
                f"The quote server is unreachable: no answer after {e.attempts} attempt(s) in "
                f"{e.elapsed_s:.1f} s, so the item list is empty."
            )
        except QuoteError as e:
            return None, f"Cannot list the catalog: {e}."

    def _page(self, query: dict[str, str]) -> None:
        items, list_error, searchable = web_search.small_catalog(self.server_address_udp, self.policy)
        result = error = None
        if "item" in query:
            result, error = quote_for_page(
                self.server_address_udp, self.policy, query["item"], query.get("quantity", "")
            )
        page = render(
            self.server_address_udp,
            items,
            list_error,
            query.get("item", ""),
            query.get("quantity", "1"),
            result,
            error,
            searchable,
        )
        self._send(HTTPStatus.OK, "text/html; charset=utf-8", page)

    def _api_items(self) -> None:
        items, error = self._items()
        body = [{"item": i, "unit_price": format_money(p)} for i, p in items] if items is not None else {"error": error}
        self._send(
            HTTPStatus.OK if items is not None else HTTPStatus.BAD_GATEWAY,
            "application/json",
            json.dumps(body, ensure_ascii=False),
        )

    def _send(self, status: HTTPStatus, content_type: str, body: str) -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"udp_client web: {self.address_string()} {format % args}\n")


def make_server(listen: Address, server: Address, policy: RetryPolicy) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"server_address_udp": server, "policy": policy})
    return ThreadingHTTPServer(listen, handler)


def serve(listen: Address, server: Address, policy: RetryPolicy) -> int:
    """Serve the page until Ctrl-C or SIGTERM; 0 on a clean stop, 5 if the address is taken."""
    import signal

    try:
        httpd = make_server(listen, server, policy)
    except OSError as e:
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
    return 0
