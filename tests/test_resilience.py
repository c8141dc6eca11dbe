"""The server never dies on one datagram, never loads a catalog the wire cannot carry, and --watch
never serves a half-written file. Every server here is started from the CLI."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import ROOT, start_server, wait_until

from udp_price import catalog as catalog_module
from udp_price.catalog import MAX_ITEMS, Catalog, parse_catalog, wire_limit_problems
from udp_price.catalog_index import CatalogIndex
from udp_price.errors import CatalogError
from udp_price.server.core import QuoteServer
from udp_price.wire import (
    ListReply,
    ListRequest,
    QuoteRequest,
    Status,
    decode_list_reply,
    decode_list_request,
    decode_reply,
    encode_list_reply,
    encode_list_request,
    encode_request,
)
from wire_format import LIST_PAGE_SIZE


def ask(addr: tuple[str, int], item: str, rid: int, deadline_s: float = 30.0) -> tuple[Status, int, int]:
    """(status, total in cents, catalog version) of one quote of 1 ``item``, asked as a client
    asks: the same request again after 1, 2, 4, 4... s (RFC 6298's doubling timer) until answered.
    A dead server never answers; a live one on a loaded machine may take seconds to be scheduled."""
    request = encode_request(QuoteRequest(rid, item, 1))
    deadline, wait_s = time.monotonic() + deadline_s, 1.0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        while True:
            s.sendto(request, addr)
            s.settimeout(max(0.001, min(wait_s, deadline - time.monotonic())))
            try:
                reply = decode_reply(s.recv(2048))
                break
            except TimeoutError:
                assert time.monotonic() < deadline, f"{addr} did not answer within {deadline_s} s"
                wait_s = min(4.0, 2 * wait_s)
    assert reply.request_id == rid
    return reply.status, reply.total, reply.catalog_version


def stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.send_signal(signal.SIGTERM)
    return proc.communicate(timeout=10)


# ---------------------------------------------------------------- wire limits


def test_a_catalog_past_the_old_16_bit_page_count_is_served_to_its_last_page() -> None:
    n = 16 * 65_536 + 5  # 65,537 pages: the page number and count no longer fit 16 bits
    fields = b"".join(f"i{k:07d}".encode().ljust(32, b"\0") for k in range(n))
    core = QuoteServer(Catalog.from_index(CatalogIndex.from_sorted_fields(fields, [1] * n)))
    last = core.handle_datagram(encode_list_request(ListRequest(1, 65_536)), ("127.0.0.1", 40000), 0.0)
    reply = decode_list_reply(last or b"")
    assert (reply.status, reply.page, reply.pages) == (Status.OK, 65_536, 65_537)
    assert reply.entries == tuple((f"i{k:07d}", 1) for k in range(n - 5, n))


def test_list_messages_carry_the_page_numbers_of_ten_million_items() -> None:
    pages = -(-10_000_000 // LIST_PAGE_SIZE)
    reply = ListReply(7, Status.OK, pages - 1, pages, (("z", 1),), 3)
    assert decode_list_reply(encode_list_reply(reply)) == reply
    assert decode_list_request(encode_list_request(ListRequest(7, pages - 1))).page == pages - 1


def test_one_item_more_than_the_limit_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog_module, "MAX_ITEMS", 100)
    problems = wire_limit_problems({f"i{n:07d}": 1 for n in range(101)})
    assert problems == ["101 items; a catalog may hold at most 100 (its index costs 40 bytes an item in memory)"]
    with pytest.raises(ValueError, match="at most 100"):
        QuoteServer(Catalog.from_prices({f"i{n:07d}": 1 for n in range(101)}))
    assert MAX_ITEMS >= 10_000_000  # the real limit: at least ten million items


def test_cli_refuses_a_catalog_over_the_limit_with_exit_4(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from udp_price.cli import server as cli

    monkeypatch.setattr(catalog_module, "MAX_ITEMS", 100)
    path = tmp_path / "big.csv"
    path.write_text("item,price\n" + "".join(f"i{n},1\n" for n in range(101)), encoding="utf-8")
    assert cli.main(["--port", "0", "--catalog", str(path)]) == 4
    err = capsys.readouterr().err
    assert "Traceback" not in err and "101 items; a catalog may hold at most 100" in err


def test_parse_catalog_reports_the_limit_with_other_problems(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog_module, "MAX_ITEMS", 100)
    text = "item,price\n" + "".join(f"i{n},1\n" for n in range(101)) + "bad,-1\n"
    with pytest.raises(CatalogError) as e:
        parse_catalog(text)
    assert any("price '-1' is negative" in p for p in e.value.problems)
    assert any("at most 100" in p for p in e.value.problems)


# ---------------------------------------------------------------- exceptions inside one datagram

_POISONED = """
import sys
import threading
from udp_price.cli import server as cli
from udp_price.server.core import QuoteServer

real = QuoteServer.quote

def quote(self, request):
    if request.item == "poison":
        raise RuntimeError("injected fault")
    return real(self, request)

QuoteServer.quote = quote
sys.exit(cli.main(sys.argv[1:]))
"""


def test_an_exception_while_handling_a_datagram_is_counted_and_serving_goes_on() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _POISONED, "--port", "0"],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    host, _, port = line.split("listening on ")[1].split()[0].rpartition(":")
    addr = (host, int(port))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for rid in range(1, 4):
                s.sendto(encode_request(QuoteRequest(rid, "poison", 1)), addr)
        assert ask(addr, "apple", 99)[:2] == (Status.OK, 50), "alive and right after three poisoned datagrams"
    finally:
        out, err = stop(proc)
    assert proc.returncode == 0
    assert "internal_errors=3" in out
    assert err.count("Traceback") == 1 and "RuntimeError: injected fault" in err, "logged once, with the traceback"


# ---------------------------------------------------------------- --watch


def catalog_text(gift_card: str) -> str:
    return (ROOT / "catalog.csv").read_text(encoding="utf-8").replace("gift card,100\n", f"gift card,{gift_card}\n")


def quotes_during(addr: tuple[str, int], seconds: float) -> set[tuple[Status, int]]:
    """Ask for the gift card over and over for ``seconds`` (bounded in count too)."""
    seen, end, rid = set(), time.monotonic() + seconds, 1000
    while time.monotonic() < end and rid < 100_000:
        rid += 1
        seen.add(ask(addr, "gift card", rid)[:2])
        time.sleep(0.02)
    return seen


def wait_for_price(addr: tuple[str, int], cents: int, timeout_s: float) -> set[tuple[Status, int]]:
    seen, end, rid = set(), time.monotonic() + timeout_s, 200_000
    while time.monotonic() < end:
        rid += 1
        got = ask(addr, "gift card", rid)[:2]
        seen.add(got)
        if got == (Status.OK, cents):
            return seen
        time.sleep(0.05)
    raise AssertionError(f"price {cents} not served within {timeout_s} s; saw {seen}")


@pytest.mark.parametrize("cut", ["mid-line", "line boundary"])
def test_watch_never_serves_a_half_written_catalog(tmp_path: Path, cut: str) -> None:
    path = tmp_path / "catalog.csv"
    path.write_text(catalog_text("50.00"), encoding="utf-8")
    proc, addr = start_server("--catalog", str(path), "--watch", "--watch-settle", "3")
    final = catalog_text("100.00")
    # mid-line: the first write ends in "gift card,1" (1.00 if loaded); line boundary: it ends
    # just before the gift card's line, so the half file has no gift card at all.
    split = final.index("gift card,") + len("gift card,1") if cut == "mid-line" else final.index("gift card,")
    try:
        with path.open("w", encoding="utf-8") as f:
            f.write(final[:split])
            f.flush()
            during = quotes_during(addr, 1.2)  # the gap between the two writes (shorter than the settle)
            f.write(final[split:])
        after = wait_for_price(addr, 10000, timeout_s=15)
    finally:
        _, err = stop(proc)
    assert during == {(Status.OK, 5000)}, f"served something other than the old catalog: {during}"
    assert after <= {(Status.OK, 5000), (Status.OK, 10000)}, after
    assert "Traceback" not in err


def test_watch_loads_a_renamed_file_at_once_and_sighup_at_once(tmp_path: Path) -> None:
    path = tmp_path / "catalog.csv"
    path.write_text(catalog_text("50.00"), encoding="utf-8")
    # A settle of 60 s: if the rename waited for it, the 15 s bound below would fail.
    proc, addr = start_server("--catalog", str(path), "--watch", "--watch-settle", "60")
    try:
        tmp = tmp_path / "catalog.csv.tmp"
        tmp.write_text(catalog_text("70.00"), encoding="utf-8")
        # Written a while before the rename (as by hand, or cp -p): the rename then sets a ctime
        # later than the mtime, which is what tells a renamed-in file from a fresh one. A rename in
        # the same clock tick as the write is not told apart: it waits for the settle interval.
        past = time.time() - 10
        os.utime(tmp, (past, past))
        os.replace(tmp, path)
        wait_for_price(addr, 7000, timeout_s=15)
        path.write_text(catalog_text("80.00"), encoding="utf-8")  # in place: --watch would wait 60 s
        proc.send_signal(signal.SIGHUP)
        wait_for_price(addr, 8000, timeout_s=15)
    finally:
        stop(proc)


def test_watch_never_loads_a_file_without_a_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "catalog.csv"
    path.write_text(catalog_text("50.00"), encoding="utf-8")
    proc, addr = start_server("--catalog", str(path), "--watch", "--watch-settle", "0.2")
    try:
        tmp = tmp_path / "catalog.csv.tmp"
        tmp.write_text(catalog_text("60.00").rstrip("\n"), encoding="utf-8")
        os.replace(tmp, path)
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "no newline" in line and "not loaded" in line, line
        assert ask(addr, "gift card", 5)[:2] == (Status.OK, 5000)
        with path.open("a", encoding="utf-8") as f:
            f.write("\n")
        wait_for_price(addr, 6000, timeout_s=15)
    finally:
        stop(proc)


def test_watch_decision_is_a_pure_policy() -> None:
    from udp_price.server.filewatch import FileState, watch_decision

    loaded = FileState((1, 10), 100, 5, b"a", 5)
    edited = FileState((1, 10), 120, 6, b"b", 6)
    renamed = FileState((1, 11), 120, 6, b"b", 9)
    created = FileState((1, 12), 120, 6, b"b", 6)
    assert watch_decision(loaded, loaded, (1, 10), None, 0.0, 2.0) == "idle"
    assert watch_decision(loaded, renamed, (1, 10), None, 0.0, 2.0) == "load", "a rename is complete"
    assert watch_decision(loaded, created, (1, 10), None, 0.0, 2.0) == "wait", "created and written: may be half"
    assert watch_decision(loaded, created, (1, 12), (created, 0.0), 1.9, 2.0) == "wait"
    assert watch_decision(loaded, created, (1, 12), (created, 0.0), 2.0, 2.0) == "load", "settled"
    assert watch_decision(loaded, edited, (1, 10), None, 0.0, 2.0) == "wait", "first seen: not settled"
    assert watch_decision(loaded, edited, (1, 10), (edited, 0.0), 1.9, 2.0) == "wait"
    assert watch_decision(loaded, edited, (1, 10), (edited, 0.0), 2.0, 2.0) == "load"
    changed_again = FileState((1, 10), 130, 7, b"c")
    assert watch_decision(loaded, changed_again, (1, 10), (edited, 0.0), 5.0, 2.0) == "wait", "changed: start over"
    same_size_same_mtime = FileState((1, 10), 120, 6, b"d", 6)
    assert watch_decision(loaded, same_size_same_mtime, (1, 10), (edited, 0.0), 5.0, 2.0) == "wait", "hash counts"


def test_watch_never_serves_a_half_written_file_created_anew(tmp_path: Path) -> None:
    # The way vim (backupcopy=no), install or cp --remove-destination replace a file: the old one
    # goes away, a new inode is created and written in pieces. A new inode alone must not count as
    # "renamed in, complete": its ctime equals its mtime, so it waits for the settle interval.
    path = tmp_path / "catalog.csv"
    path.write_text(catalog_text("50.00"), encoding="utf-8")
    proc, addr = start_server("--catalog", str(path), "--watch", "--watch-settle", "3")
    final = catalog_text("100.00")
    split = final.index("gift card,")  # at a line boundary: the first half ends with a newline
    try:
        os.rename(path, tmp_path / "catalog.csv~")
        with path.open("w", encoding="utf-8") as f:
            f.write(final[:split])
            f.flush()
            during = quotes_during(addr, 1.2)  # the writer pauses (shorter than the settle)
            f.write(final[split:])
        os.unlink(tmp_path / "catalog.csv~")
        after = wait_for_price(addr, 10000, timeout_s=15)
    finally:
        _, err = stop(proc)
    assert during == {(Status.OK, 5000)}, f"served something other than the old catalog: {during}"
    assert after <= {(Status.OK, 5000), (Status.OK, 10000)}, after
    assert "Traceback" not in err


# ---------------------------------------------------------------- found by a second review


def reload_line(proc: subprocess.Popen[str], marker: str) -> str:
    """The first stderr line containing ``marker`` (bounded: the server logs little)."""
    assert proc.stderr is not None
    for _ in range(50):
        line = proc.stderr.readline()
        if marker in line or not line:
            return line
    return ""


@pytest.mark.parametrize("how", ["watch", "sighup"])
def test_a_fifo_renamed_over_the_catalog_never_blocks_the_server(tmp_path: Path, how: str) -> None:
    path = tmp_path / "catalog.csv"
    path.write_text(catalog_text("50.00"), encoding="utf-8")
    proc, addr = start_server("--catalog", str(path), *(["--watch"] if how == "watch" else []))
    try:
        os.mkfifo(tmp_path / "new.fifo")
        os.rename(tmp_path / "new.fifo", path)
        if how == "sighup":
            proc.send_signal(signal.SIGHUP)
        line = reload_line(proc, "not a regular file")
        assert "not a regular file (a FIFO); a catalog must be one" in line, line
        assert ask(addr, "gift card", 1)[:2] == (Status.OK, 5000), "still serving the old catalog"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)  # stops on SIGTERM: nothing blocked in open()
    assert proc.returncode == 0 and "reloads.failed=1" in out


def test_a_symlink_to_a_device_or_an_oversized_file_is_refused_unread(tmp_path: Path) -> None:
    from udp_price.catalog import MAX_CATALOG_BYTES

    zero = tmp_path / "zero.csv"
    zero.symlink_to("/dev/zero")
    sparse = tmp_path / "sparse.csv"
    with sparse.open("wb") as f:
        f.truncate(MAX_CATALOG_BYTES + 1)  # sparse: costs no disk, would cost memory if read
    for path, message in (
        (zero, "not a regular file (a character device); a catalog must be one"),
        (sparse, f"{MAX_CATALOG_BYTES + 1:,} bytes; a catalog file may have at most {MAX_CATALOG_BYTES:,}"),
    ):
        r = subprocess.run(
            [sys.executable, "udp_server.py", "--port", "0", "--catalog", str(path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == 4 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_sighup_right_after_the_start_line_reloads_instead_of_killing() -> None:
    for _ in range(5):
        proc, addr = start_server()
        proc.send_signal(signal.SIGHUP)  # the instant the start line is out
        try:
            assert ask(addr, "apple", 1)[0] is Status.OK
        finally:
            out, _ = stop(proc)
        assert proc.returncode == 0, f"died on SIGHUP: rc {proc.returncode}"
        assert "reloads.unchanged=1" in out, out


def test_list_pages_follow_the_catalog_object_even_when_versions_collide() -> None:
    # Versions are 32 bits: two catalogs may share one. Nothing derived may be keyed by it alone.
    core = QuoteServer(Catalog({"apple": 50, "pear": 60}, version=7))
    page = ListRequest(1, 0)
    before = decode_list_reply(core.handle_datagram(encode_list_request(page), ("127.0.0.1", 40000), 0.0) or b"")
    core.set_catalog(Catalog({"apple": 950, "pear": 60}, version=7))
    after = decode_list_reply(
        core.handle_datagram(encode_list_request(ListRequest(2, 0)), ("127.0.0.1", 40000), 0.0) or b""
    )
    assert dict(before.entries)["apple"] == 50 and dict(after.entries)["apple"] == 950


def test_catalog_version_is_a_truncated_blake2b_not_a_crc() -> None:
    import hashlib
    import zlib

    prices = {"apple": 50, "pear": 60}
    # Every 32-byte wire field in name order, then every price as a big-endian u64.
    canonical = b"apple".ljust(32, b"\0") + b"pear".ljust(32, b"\0") + (50).to_bytes(8, "big") + (60).to_bytes(8, "big")
    version = Catalog.from_prices(prices).version
    assert version == int.from_bytes(hashlib.blake2b(canonical, digest_size=4).digest(), "big")
    assert version != zlib.crc32(canonical)


def test_reload_runs_off_the_serving_loop_and_an_unchanged_file_is_a_no_op(tmp_path: Path) -> None:
    from udp_price.server.ops import Operations

    path = tmp_path / "catalog.csv"
    path.write_text("item,price\napple,1.00\n", encoding="utf-8")
    core = QuoteServer(parse_catalog(path.read_text(encoding="utf-8")))
    woken = threading.Event()
    ops = Operations(core, str(path), wake=woken.set)
    try:
        ops.reload()  # returns at once; the worker reads, hashes: the same content
        assert woken.wait(10)
        ops.swap_in_ready()
        assert core.stats["reloads.unchanged"] == 1 and "reloads.ok" not in core.stats
        path.write_text("item,price\napple,2.00\n", encoding="utf-8")
        old = core.catalog
        woken.clear()
        ops.reload()
        assert woken.wait(10)
        assert core.catalog is old, "nothing changes until the serving loop swaps it in"
        ops.swap_in_ready()
        assert core.catalog.prices["apple"] == 200 and core.stats["reloads.ok"] == 1
    finally:
        ops.close()


def test_requests_during_a_reload_run_it_once_more_afterwards(tmp_path: Path) -> None:
    from udp_price.server.ops import Operations

    path = tmp_path / "catalog.csv"
    path.write_text("item,price\napple,1.00\n", encoding="utf-8")
    core = QuoteServer(parse_catalog(path.read_text(encoding="utf-8")))
    runs: list[int] = []
    started, release = threading.Event(), threading.Event()
    ops = Operations(core, str(path))
    original = ops._reload_now

    def slow_reload() -> None:
        runs.append(1)
        started.set()
        release.wait(10)
        original()

    ops._reload_now = slow_reload  # type: ignore[method-assign]
    try:
        ops.reload()
        assert started.wait(10)
        for _ in range(5):
            ops.reload()  # five requests during the reload in flight
        release.set()
        wait_until(lambda: len(runs) == 2, "the one run more")
    finally:
        ops.close()  # joins the worker: no run can start after this
    assert len(runs) == 2, runs
    assert core.stats["reloads.unchanged"] == 2, "six requests, two runs, both reported (counted by close)"
