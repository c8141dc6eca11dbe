"""The quote page: items from the server, a quote, errors in words, driven in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import rootenv
from helpers import ROOT, expected_prices, free_port, spawn

PY = sys.executable
PRICES = expected_prices()
ARTIFACTS = Path(os.environ.get("ARTIFACTS_DIR", ROOT / "tests" / "artifacts"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def need_browser() -> str:
    """Debian's chromium and Playwright's Python package; skip elsewhere, but never under CI=true."""
    chromium = shutil.which("chromium")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        chromium = None
    if chromium is None:
        reason = "needs Debian's chromium and the playwright package (.ci/run installs both)"
        rootenv.cannot_run(reason)
    return chromium


@pytest.fixture
def page_and_server() -> Iterator[tuple[str, subprocess.Popen[str]]]:
    server, line = spawn(["udp_server.py", "--port", "0"], "listening on")
    udp = line.split("listening on ")[1].split()[0]
    web, web_line = spawn(
        [
            "udp_client.py",
            "--server",
            udp,
            "--timeout",
            "0.05",
            "--deadline",
            "1.5",
            "web",
            "--listen",
            f"127.0.0.1:{free_port(socket.SOCK_STREAM)}",
        ],
        "quote page on",
    )
    url = web_line.split("quote page on ")[1].split()[0]
    try:
        yield url, server
    finally:
        for proc in (web, server):
            if proc.poll() is None:
                proc.terminate()
            proc.communicate(timeout=10)


def test_item_list_comes_from_the_server(page_and_server: tuple[str, subprocess.Popen[str]]) -> None:
    url, _ = page_and_server
    items = json.loads(urllib.request.urlopen(url + "api/items", timeout=10).read())
    assert [i["item"] for i in items] == sorted(PRICES)
    assert all(i["unit_price"] == f"{PRICES[i['item']] // 100}.{PRICES[i['item']] % 100:02d}" for i in items)


def test_page_without_a_browser(page_and_server: tuple[str, subprocess.Popen[str]]) -> None:
    url, _ = page_and_server
    html = urllib.request.urlopen(url, timeout=10).read().decode()
    assert '<label for="item">Item</label>' in html and '<label for="quantity">Quantity</label>' in html
    assert html.count("<option") == len(PRICES)
    bad = urllib.request.urlopen(url + "?item=apple&quantity=0", timeout=10).read().decode()
    assert 'role="alert"' in bad and "Bad quantity" in bad
    unknown = urllib.request.urlopen(url + "?item=kiwi&quantity=2", timeout=10).read().decode()
    assert "Unknown item" in unknown


def test_quote_in_headless_chromium(page_and_server: tuple[str, subprocess.Popen[str]]) -> None:
    chromium = need_browser()
    from playwright.sync_api import expect, sync_playwright

    url, server = page_and_server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 640, "height": 560})
        page.goto(url)
        page.get_by_label("Item").select_option("café crème")  # found by its label: the label is wired up
        page.get_by_label("Quantity").fill("3")
        page.get_by_role("button", name="Get quote").click()
        cents = PRICES["café crème"] * 3
        expect(page.locator("#total")).to_have_text(f"3 x café crème @ 3.80 = {cents // 100}.{cents % 100:02d}")
        expect(page.locator("#attempts")).to_contain_text("1 attempt, round trip")
        page.screenshot(path=str(ARTIFACTS / "web-quote.png"))

        page.get_by_label("Quantity").fill("12")
        page.get_by_label("Quantity").press("Enter")  # the keyboard alone submits
        expect(page.locator("#total")).to_have_text("12 x café crème @ 3.80 = 45.60")

        server.terminate()
        server.communicate(timeout=10)
        page.get_by_role("button", name="Get quote").click()
        alert = page.get_by_role("alert").first
        expect(alert).to_contain_text("unreachable")
        expect(alert).to_contain_text("attempt(s) in")
        page.screenshot(path=str(ARTIFACTS / "web-unreachable.png"))
        browser.close()


def test_search_box_over_a_100k_item_catalog_in_headless_chromium(tmp_path: Path) -> None:
    chromium = need_browser()
    from playwright.sync_api import expect, sync_playwright

    catalog = tmp_path / "big.csv"
    with catalog.open("w", encoding="utf-8") as f:
        f.write("item,price\n")
        f.writelines(f"sku-{k:06d},{k % 1000}.{k % 100:02d}\n" for k in range(100_000))
    server, line = spawn(["udp_server.py", "--port", "0", "--catalog", str(catalog)], "listening on")
    udp = line.split("listening on ")[1].split()[0]
    web, web_line = spawn(
        ["udp_client.py", "--server", udp, "web", "--listen", f"127.0.0.1:{free_port(socket.SOCK_STREAM)}"],
        "quote page on",
    )
    url = web_line.split("quote page on ")[1].split()[0]
    try:
        html = urllib.request.urlopen(url, timeout=30).read().decode()
        assert 'role="combobox"' in html and "<option" not in html  # no 100,000-option drop-down
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 640, "height": 700})
            page.goto(url)
            box = page.get_by_role("combobox", name="Item")  # labelled, and a combobox to screen readers
            box.press_sequentially("sku-04242")
            options = page.get_by_role("option")
            expect(options).to_have_count(10)  # sku-042420 .. sku-042429
            expect(page.locator("#item-status")).to_have_text("10 matches")
            box.press("ArrowDown")
            box.press("ArrowDown")
            expect(box).to_have_attribute("aria-activedescendant", "item-option-1")
            box.press("Enter")  # takes the highlighted match
            expect(box).to_have_value("sku-042421")
            page.get_by_label("Quantity").fill("2")
            page.get_by_label("Quantity").press("Enter")
            cents = (42421 % 1000 * 100 + 42421 % 100) * 2
            expect(page.locator("#total")).to_have_text(f"2 x sku-042421 @ 421.21 = {cents // 100}.{cents % 100:02d}")
            page.screenshot(path=str(ARTIFACTS / "web-search.png"))
            browser.close()
    finally:
        for proc in (web, server):
            if proc.poll() is None:
                proc.terminate()
            proc.communicate(timeout=10)


@pytest.mark.parametrize(
    ("query", "why"),
    [("ap%00", "NUL"), ("x" * 33, "33 bytes"), ("%C3%A9" * 17, "34 bytes of UTF-8")],
)
def test_a_search_the_wire_cannot_carry_is_the_callers_mistake(
    page_and_server: tuple[str, subprocess.Popen[str]], query: str, why: str
) -> None:
    url, _ = page_and_server
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(url + "api/search?q=" + query, timeout=10)
    assert caught.value.code == 400, why
    body = json.loads(caught.value.read())
    assert body["code"] == "bad_prefix" and body["error"].startswith("Cannot search for that: prefix")


def test_a_search_of_only_spaces_matches_nothing(page_and_server: tuple[str, subprocess.Popen[str]]) -> None:
    url, _ = page_and_server
    assert json.loads(urllib.request.urlopen(url + "api/search?q=%20%20", timeout=10).read()) == []
    first = sorted(PRICES)[0]
    found = json.loads(urllib.request.urlopen(url + "api/search?q=" + first[:2], timeout=10).read())
    assert [f["item"] for f in found] == sorted(p for p in PRICES if p.startswith(first[:2]))
