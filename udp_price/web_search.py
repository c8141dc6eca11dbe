"""Type-ahead item search for the quote page, so a catalog of a million items stays usable.

A catalog of at most SELECT_LIMIT items is offered as a plain drop-down (it has its own
type-ahead in every browser). A bigger one gets a search box instead: an ARIA 1.2 combobox
(input + listbox, aria-activedescendant, arrow keys, Enter, Escape) that asks this process's
``/api/search?q=TEXT`` as the user types; this process asks the quote server with a prefix-search
list request (the page's one kept client, with prefix and limit: one or two page requests).
Without JavaScript the box is an ordinary text field: the typed name is quoted as it stands.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

from udp_price.catalog import format_money
from udp_price.client.api import NoAnswer
from udp_price.errors import QuoteError
from udp_price.wire.items import encode_prefix, normalize_prefix

Lister = Callable[[str, int | None], tuple[int, list[tuple[str, int]]]]
"""list_items(prefix, limit) -> (catalog version, [(item, cents)]), as the kept client offers it."""

SELECT_LIMIT = 1000
"""Largest catalog offered as a drop-down; above it the page shows the search box."""
SEARCH_RESULTS = 20
"""Suggestions per keystroke: two list pages."""

SCRIPT = """
(() => {
  const box = document.getElementById('item'), list = document.getElementById('item-options');
  const status = document.getElementById('item-status');
  let active = -1, timer = null, asked = 0;
  const options = () => Array.from(list.querySelectorAll('[role=option]'));
  function close() { list.hidden = true; box.setAttribute('aria-expanded', 'false');
    box.removeAttribute('aria-activedescendant'); active = -1; }
  function mark(i) { const opts = options(); if (!opts.length) return;
    active = (i + opts.length) % opts.length;
    opts.forEach((o, k) => o.setAttribute('aria-selected', k === active ? 'true' : 'false'));
    box.setAttribute('aria-activedescendant', opts[active].id); opts[active].scrollIntoView({block: 'nearest'}); }
  function choose(o) { box.value = o.dataset.item; close(); }
  async function ask() {
    const q = box.value, mine = ++asked;
    if (!q) { list.replaceChildren(); close(); status.textContent = ''; return; }
    const r = await fetch('/api/search?q=' + encodeURIComponent(q));
    if (mine !== asked) return;  // a later keystroke already asked again
    const body = await r.json().catch(() => null);
    const found = r.ok && Array.isArray(body) ? body : [];
    list.replaceChildren(...found.map((f, k) => { const o = document.createElement('li');
      o.id = 'item-option-' + k; o.setAttribute('role', 'option'); o.dataset.item = f.item;
      o.textContent = f.item + ' (' + f.unit_price + ')';
      o.addEventListener('mousedown', e => { e.preventDefault(); choose(o); }); return o; }));
    list.hidden = !found.length; box.setAttribute('aria-expanded', found.length ? 'true' : 'false'); active = -1;
    status.textContent = r.ok ? found.length + (found.length === 1 ? ' match' : ' matches')
      : (body && body.error) || 'search failed';
  }
  box.addEventListener('input', () => { clearTimeout(timer); timer = setTimeout(ask, 120); });
  box.addEventListener('keydown', e => {
    if (e.key === 'ArrowDown') { e.preventDefault(); if (list.hidden) ask(); else mark(active + 1); }
    else if (e.key === 'ArrowUp') { e.preventDefault(); mark(active - 1); }
    else if (e.key === 'Enter' && !list.hidden && active >= 0) { e.preventDefault(); choose(options()[active]); }
    else if (e.key === 'Escape') { close(); }
  });
  box.addEventListener('blur', () => setTimeout(close, 100));
})();
"""

STYLE = """
.combo { position: relative; }
#item-options { list-style: none; margin: 0; padding: 0; border: 1px solid #555; max-height: 16rem;
  overflow-y: auto; background: #fff; position: absolute; width: 100%; z-index: 1; }
#item-options [role=option] { padding: .3rem .5rem; cursor: pointer; }
#item-options [aria-selected=true] { background: #1d4ed8; color: #fff; }
.hint { font-size: .9rem; color: #444; }
"""


def combobox(chosen: str, disabled: str) -> str:
    """The search box in place of the drop-down (``disabled`` is '' or ' disabled')."""
    esc = html.escape
    return (
        f"<style>{STYLE}</style>"
        '<div class="combo">'
        f'<input id="item" name="item" type="text" required autocomplete="off" value="{esc(chosen)}" '
        'role="combobox" aria-autocomplete="list" aria-expanded="false" aria-controls="item-options" '
        f'aria-describedby="item-hint"{disabled}>'
        '<ul id="item-options" role="listbox" aria-label="Matching items" hidden></ul></div>'
        '<p id="item-hint" class="hint">Type the start of a name; arrow keys pick a match, Enter takes it.</p>'
        '<p id="item-status" class="hint" role="status" aria-live="polite"></p>'
        f"<script>{SCRIPT}</script>"
    )


def small_catalog(
    list_items: Lister,
) -> tuple[list[tuple[str, int]] | None, NoAnswer | QuoteError | None, bool]:
    """(items, error, searchable): the whole catalog when it has at most SELECT_LIMIT items (only
    the pages needed to tell are asked for), else ([], None, True): the page shows the search box.
    On failure items is None and error is what went wrong (NoAnswer: nobody answered)."""
    try:
        items = list_items("", SELECT_LIMIT + 1)[1]
    except (NoAnswer, QuoteError) as e:
        return None, e, False
    if len(items) > SELECT_LIMIT:
        return [], None, True
    return items, None, False


def search(list_items: Lister, query: str) -> tuple[list[dict[str, Any]] | None, Exception | None]:
    """(matches as JSON objects, None) or (None, what went wrong) for /api/search?q=QUERY.

    The error is a ValueError for a query the wire cannot carry (a NUL, more than 32 bytes of
    UTF-8: the caller's mistake), NoAnswer when nobody answered, another QuoteError for an
    unusable answer. A query of only spaces matches nothing (names never start with a space)."""
    if not query.strip():
        return [], None
    try:
        encode_prefix(normalize_prefix(query))  # the caller's mistake is told apart before asking anyone
        found = list_items(query, SEARCH_RESULTS)[1]
    except (NoAnswer, ValueError, QuoteError) as e:
        return None, e
    return [{"item": name, "unit_price": format_money(price)} for name, price in found], None
