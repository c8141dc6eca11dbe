"""Bulk with real-world files, disks and signals, end to end through the CLI.

Every test makes its own file, runs ``udp_client.py bulk`` as a subprocess and checks the promise:
exactly one output record per input record, in input order, every input cell kept, the documented
exit code, one clear line for a problem, the summary, and never a traceback.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, RunningServer, expected_prices

PRICES = expected_prices()
PY = sys.executable
csv.field_size_limit(32 * 1024 * 1024)  # this test reads back 10 MB cells


def bulk(
    server: RunningServer | None, *args: str | Path, stdin: bytes | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[bytes]:
    where = ["--server", f"{server.address[0]}:{server.address[1]}"] if server else ["--server", "127.0.0.1:9"]
    return subprocess.run(
        [PY, "udp_client.py", *where, "bulk", *map(str, args)],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        timeout=timeout,
    )


def clean(r: subprocess.CompletedProcess[bytes], code: int, rows: int | None = None) -> str:
    """stderr, after checking the exit code, no traceback and (when rows is given) the summary."""
    err = r.stderr.decode("utf-8")
    assert r.returncode == code, err[-2000:]
    assert "Traceback" not in err
    if rows is not None:
        assert f"udp_client: bulk: rows={rows} " in err, err[-2000:]
    return err


def table(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


def money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def assert_ok(out_row: list[str], cells: list[str], item: str, qty: int) -> None:
    """An OK row: the input cells unchanged, then unit_price,total,status,attempts,error."""
    width = len(cells)
    assert out_row[:width] == cells
    unit = PRICES[item]
    assert out_row[width : width + 3] == [money(unit), money(unit * qty), "OK"], out_row[width:]


def assert_bad(out_row: list[str], cells: list[str], line: int, why: str) -> None:
    width = len(cells)
    assert out_row[:width] == cells
    status, error = out_row[width + 2], out_row[width + 4]
    assert (status, error.startswith(f"line {line}: ")) == ("BAD_ROW", True), out_row[width:]
    assert why in error, error


# ------------------------------------------------------------------ 1. encodings, numbers, disks


def test_latin1_file_bad_rows_without_flag_ok_with_it(server: RunningServer, tmp_path: Path) -> None:
    rows = [("café crème", 2, "noël"), ("apple", 3, "plain"), ("pear", 1, "über")]
    src = tmp_path / "latin1.csv"
    src.write_bytes(("item,quantity,note\n" + "".join(f"{i},{q},{n}\n" for i, q, n in rows)).encode("latin-1"))

    r = bulk(server, src, "--no-progress")
    clean(r, 1, rows=3)
    out = table(r.stdout)
    assert out[0] == [
        "item",
        "quantity",
        "note",
        "unit_price",
        "total",
        "status",
        "attempts",
        "error",
        "catalog_version",
    ]
    assert_bad(out[1], ["caf\\xe9 cr\\xe8me", "2", "no\\xebl"], 2, "not valid utf-8 (byte 0xe9 at offset 3)")
    assert_ok(out[2], ["apple", "3", "plain"], "apple", 3)
    assert_bad(out[3], ["pear", "1", "\\xfcber"], 4, "not valid utf-8")

    r = bulk(server, src, "--encoding", "latin-1", "--no-progress")
    clean(r, 0, rows=3)
    out = table(r.stdout)
    for got, (item, qty, note) in zip(out[1:], rows, strict=True):
        assert_ok(got, [item, str(qty), note], item, qty)


def test_mixed_encodings_cost_one_row_each_wherever_they_are(server: RunningServer, tmp_path: Path) -> None:
    """A Latin-1 byte far past the first 8 KB (where the old reader died) is one BAD_ROW, nothing more."""
    n, bad_lines = 20_001, {3, 9_001, 15_003, 20_001}  # odd rows hold "café crème"
    lines = [b"id,item,quantity"]
    for i in range(n):
        item = "café crème" if i % 2 else "apple"
        lines.append(f"{i},{item},1".encode("latin-1" if i + 2 in bad_lines else "utf-8"))
    src = tmp_path / "mixed.csv"
    src.write_bytes(b"\n".join(lines) + b"\n")
    r = bulk(server, src, "--no-progress")
    err = clean(r, 1, rows=n)
    assert f"ok={n - len(bad_lines)} failed={len(bad_lines)} (BAD_ROW={len(bad_lines)})" in err
    out = table(r.stdout)[1:]
    assert [row[0] for row in out] == [str(i) for i in range(n)]
    for i, row in enumerate(out):
        if i + 2 in bad_lines:
            assert_bad(row, [str(i), "caf\\xe9 cr\\xe8me", "1"], i + 2, "not valid utf-8")
        else:
            assert row[5] == "OK", row


def test_bom_and_crlf(server: RunningServer, tmp_path: Path) -> None:
    src = tmp_path / "excel.csv"
    src.write_bytes(b"\xef\xbb\xbfItem,Quantity,Note\r\napple,3,a\r\ncaf\xc3\xa9 cr\xc3\xa8me,2,b\r\n")
    for encoding in ("utf-8", "utf-8-sig"):
        r = bulk(server, src, "--encoding", encoding, "--no-progress")
        clean(r, 0, rows=2)
        out = table(r.stdout)
        assert out[0][:3] == ["Item", "Quantity", "Note"]
        assert_ok(out[1], ["apple", "3", "a"], "apple", 3)
        assert_ok(out[2], ["café crème", "2", "b"], "café crème", 2)


@pytest.mark.parametrize(("sep", "flag"), [(";", "auto"), (";", ";"), ("\t", "auto"), ("\t", "tab")])
def test_semicolon_and_tab_files(server: RunningServer, tmp_path: Path, sep: str, flag: str) -> None:
    src = tmp_path / "orders.csv"
    body = [["1", "apple", "3", "x,y"], ["2", "pear", "0", "zero"], ["3", "banana", "12", ""]]
    src.write_text("\n".join(sep.join(c) for c in [["id", "item", "quantity", "note"], *body]) + "\n", "utf-8")
    r = bulk(server, src, "--delimiter", flag, "--no-progress")
    clean(r, 1, rows=3)
    out = table(r.stdout)  # output is always comma-separated CSV
    assert_ok(out[1], body[0], "apple", 3)
    assert_bad(out[2], body[1], 3, "quantity 0 is out of range")
    assert_ok(out[3], body[2], "banana", 12)


def test_ten_megabyte_lines_and_one_over_the_bound(server: RunningServer, tmp_path: Path) -> None:
    note = "n" * 10_000_000
    huge_item = "i" * 10_000_000
    src = tmp_path / "long.csv"
    with src.open("w", encoding="utf-8") as f:
        f.write(f"item,quantity,note\napple,3,{note}\n{huge_item},1,x\npear,2,{'o' * 17_000_000}\norange,1,end\n")
    r = bulk(server, src, "-o", tmp_path / "out.csv", "--no-progress")
    clean(r, 1, rows=4)
    out = table((tmp_path / "out.csv").read_bytes())
    assert len(out) == 5
    assert_ok(out[1], ["apple", "3", note], "apple", 3)
    assert_bad(out[2], [huge_item, "1", "x"], 3, "item is 10,000,000 bytes in UTF-8; the wire field holds 32")
    assert_bad(out[3], ["", "", ""], 4, "longer than 16,777,216 bytes (17,000,008); its cells are not kept")
    assert_ok(out[4], ["orange", "1", "end"], "orange", 1)


def test_five_thousand_digit_numbers(server: RunningServer, tmp_path: Path) -> None:
    digits = "7" * 5000
    src = tmp_path / "digits.csv"
    src.write_text(f"item,quantity\napple,{digits}\napple,-{digits}\napple,2\n", "utf-8")
    r = bulk(server, src, "--no-progress")
    clean(r, 1, rows=3)
    out = table(r.stdout)
    assert_bad(out[1], ["apple", digits], 2, "has 5,000 characters; at most 10 digits allowed")
    assert_bad(out[2], ["apple", "-" + digits], 3, "has 5,001 characters")
    assert_ok(out[3], ["apple", "2"], "apple", 2)
    for flag in ("--window", "--batch"):
        r = bulk(server, src, flag, digits)
        assert r.returncode == 2 and b"Traceback" not in r.stderr and b"at most 9 digits" in r.stderr


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b'item,"quantity\n', "line 1: a quoted field is not closed"),
        (b'"item"x,quantity\n', "line 1: broken CSV"),
        (b"caf\xe9,item,quantity\n", "line 1: not valid utf-8"),
        (b"name,qty\n", "line 1: header must name 'item' and 'quantity'"),
        (b"", "empty input"),
    ],
)
def test_unusable_header_is_one_line_exit_2(tmp_path: Path, header: bytes, message: str) -> None:
    src = tmp_path / "h.csv"
    src.write_bytes(header + b"apple,1\n" if header else b"")
    r = bulk(None, src)
    err = clean(r, 2)
    assert err.count("\n") == 1 and message in err, err


def test_header_field_over_128_kb_is_fine(server: RunningServer, tmp_path: Path) -> None:
    wide = "w" * 200_000
    src = tmp_path / "wide.csv"
    src.write_text(f"item,quantity,{wide}\napple,1,x\n", "utf-8")
    r = bulk(server, src, "--no-progress")
    clean(r, 0, rows=1)
    assert table(r.stdout)[0][2] == wide


def test_unreadable_input_exit_2(tmp_path: Path) -> None:
    r = bulk(None, tmp_path)  # a directory
    err = clean(r, 2)
    assert err.count("\n") == 1 and "cannot read: Is a directory" in err


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("to_stdout", [False, True])
def test_dev_full_is_exit_4_with_one_line_and_the_summary(
    server: RunningServer, tmp_path: Path, to_stdout: bool
) -> None:
    src = tmp_path / "small.csv"
    src.write_text("item,quantity\napple,1\npear,2\n", "utf-8")
    args: list[str | Path] = [src, "--no-progress"] if to_stdout else [src, "-o", "/dev/full", "--no-progress"]
    with open("/dev/full", "wb") as full:
        proc = subprocess.run(
            [PY, "udp_client.py", *server_arg(server), "bulk", *map(str, args)],
            cwd=ROOT,
            stdout=full if to_stdout else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )
    err = clean(proc, 4, rows=2)
    problems = [line for line in err.splitlines() if not line.startswith("udp_client: bulk: ")]
    assert len(problems) == 1 and "No space left on device" in problems[0], err


def server_arg(server: RunningServer) -> list[str]:
    return ["--server", f"{server.address[0]}:{server.address[1]}"]


def test_read_error_mid_file_keeps_the_rows_before_it() -> None:
    from udp_price.bulk.reader import RecordReader, read_header, rows_of

    class Failing(io.BytesIO):
        """Delivers one line per read (like a terminal), then fails as a dying disk would."""

        def read1(self, size: int | None = -1) -> bytes:
            if self.tell() > 30:
                raise OSError(5, "Input/output error")
            return super().readline(size)

    reader = RecordReader(Failing(b"item,quantity\napple,1\npear,2\norange,3\nkiwi,4\n"))
    header = read_header(reader)
    assert [r.cells for r in rows_of(reader, header)] == [["apple", "1"], ["pear", "2"], ["orange", "3"]]
    assert reader.lines_read == 4
    assert reader.read_error is not None and reader.read_error.errno == 5


# ------------------------------------------------------------------ 2. never lose or overwrite


def test_output_that_is_the_input_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "orders.csv"
    data = "item,quantity\n" + "apple,1\n" * 2000
    src.write_text(data, "utf-8")
    link = tmp_path / "hard.csv"
    os.link(src, link)
    sym = tmp_path / "sym.csv"
    sym.symlink_to(src)
    for out in (src, link, sym):
        r = bulk(None, src, "-o", out)
        err = clean(r, 2)
        assert "is the input file (same device and inode): refusing to overwrite it" in err
        assert err.count("\n") == 1
    with src.open("rb") as stdin, src.open("ab") as stdout:  # bulk - < orders.csv >> orders.csv
        proc = subprocess.run(
            [PY, "udp_client.py", "--server", "127.0.0.1:9", "bulk", "-"],
            cwd=ROOT,
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.PIPE,
            timeout=60,
        )
    assert proc.returncode == 2 and b"stdout is the input file" in proc.stderr
    assert src.read_text("utf-8") == data, "the input is untouched"


COLLIDING = ["line", "item", "quantity", "status", "total", "unit_price", "attempts", "error", "quote_status", "n", "n"]


def test_colliding_header_names_csv(server: RunningServer, tmp_path: Path) -> None:
    src = tmp_path / "c.csv"
    cells = ["L", "apple", "3", "S", "T", "U", "A", "E", "Q", "n1", "n2"]
    src.write_text(",".join(COLLIDING) + "\n" + ",".join(cells) + "\n", "utf-8")
    r = bulk(server, src, "--no-progress")
    clean(r, 0, rows=1)
    out = list(csv.DictReader(io.StringIO(r.stdout.decode("utf-8"))))
    header = table(r.stdout)[0]
    assert header == [
        *COLLIDING,
        "quote_unit_price",
        "quote_total",
        "quote_quote_status",
        "quote_attempts",
        "quote_error",
        "catalog_version",
    ]
    assert table(r.stdout)[1][: len(cells)] == cells
    row = out[0]
    assert (row["status"], row["total"], row["quote_status"]) == ("S", "T", "Q")
    assert (row["quote_quote_status"], row["quote_total"], row["quote_unit_price"]) == ("OK", "1.50", "0.50")


def test_colliding_header_names_jsonl(server: RunningServer, tmp_path: Path) -> None:
    src = tmp_path / "c.csv"
    cells = ["L", "apple", "3", "S", "T", "U", "A", "E", "Q", "n1", "n2"]
    src.write_text(",".join(COLLIDING) + "\n" + ",".join(cells) + "\napple,x\n", "utf-8")
    r = bulk(server, src, "--format", "jsonl", "--no-progress")
    clean(r, 1, rows=2)
    first, second = (json.loads(line) for line in r.stdout.decode("utf-8").splitlines())
    assert [first[k] for k in (*COLLIDING[:-1], "n_2")] == cells, "every input cell under its own key"
    assert (first["quote_line"], first["quote_quote_status"], first["quote_total"]) == (2, "OK", "1.50")
    assert (second["line"], second["item"], second["quantity"], second["n_2"]) == ("apple", "x", "", "")
    assert second["quote_quote_status"] == "BAD_ROW" and second["quote_total"] is None


def test_bad_row_keeps_every_cell(server: RunningServer, tmp_path: Path) -> None:
    src = tmp_path / "wide.csv"
    src.write_text("item,quantity\napple,1,extra1,extra2\npear\n", "utf-8")
    r = bulk(server, src, "--no-progress")
    clean(r, 1, rows=2)
    out = table(r.stdout)
    assert out[1][:2] == ["apple", "1"] and out[1][2] == "" and out[1][4] == "BAD_ROW"
    assert out[1][8:] == ["extra1", "extra2"], "surplus cells follow the result columns"
    assert out[2][:2] == ["pear", ""] and "expected 2 columns, got 1" in out[2][6]
    r = bulk(server, src, "--format", "jsonl", "--no-progress")
    first = json.loads(r.stdout.decode("utf-8").splitlines()[0])
    assert first["extra_cells"] == ["extra1", "extra2"] and first["status"] == "BAD_ROW"


# ------------------------------------------------------------------ 3. quoted newlines


def test_quoted_newlines_are_one_record_and_a_stray_quote_costs_one(server: RunningServer, tmp_path: Path) -> None:
    src = tmp_path / "notes.csv"
    src.write_bytes(
        b"id,item,quantity,note\r\n"
        b'1,apple,3,"line one\r\nline two, with comma\r\n""quoted"""\r\n'
        b'2,pear,2,"unclosed note\r\n'
        b"3,orange,1,plain\r\n"
        b'4,banana,12,"lf\nonly"\n' + b"".join(f"{i},apple,1,x\n".encode() for i in range(5, 200))
    )
    r = bulk(server, src, "--no-progress")
    clean(r, 1, rows=199)
    out = table(r.stdout)[1:]
    assert [row[0] for row in out] == ["1", '2,pear,2,"unclosed note', *map(str, range(3, 200))]
    assert_ok(out[0], ["1", "apple", "3", 'line one\r\nline two, with comma\r\n"quoted"'], "apple", 3)
    assert_bad(out[1], ['2,pear,2,"unclosed note', "", "", ""], 5, "a quoted field is not closed on this line")
    assert_ok(out[2], ["3", "orange", "1", "plain"], "orange", 1)
    assert_ok(out[3], ["4", "banana", "12", "lf\nonly"], "banana", 12)
    assert all(row[6] == "OK" for row in out[4:])


def test_quoted_field_over_the_line_bound(server: RunningServer, tmp_path: Path) -> None:
    note = "\n".join(f"l{i}" for i in range(150))
    src = tmp_path / "long_note.csv"
    src.write_text(f'item,quantity,note\napple,1,"{note}"\npear,1,x\n', "utf-8")
    r = bulk(server, src, "--no-progress")
    clean(r, 1, rows=151)  # line 2 alone is a BAD_ROW; lines 3-151 are then records of their own
    out = table(r.stdout)[1:]
    assert len(out) == 151
    assert_bad(out[0], ['apple,1,"l0', "", ""], 2, "at most 100 lines")
    for i, row in enumerate(out[1:-1], start=1):
        assert_bad(row, [f"l{i}" + ('"' if i == 149 else ""), "", ""], i + 2, "expected 3 columns, got 1")
    assert_ok(out[-1], ["pear", "1", "x"], "pear", 1)


# ------------------------------------------------------------------ 4. signals and memory

RSS_PARENT = """
import resource, subprocess, sys
child = subprocess.Popen(sys.argv[1:])
print(child.pid, flush=True)
code = child.wait()
print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, flush=True)
"""


def test_sigterm_on_a_million_rows_behind_a_slow_path(server: RunningServer, tmp_path: Path) -> None:
    """SIGTERM 1 s into 1,000,000 rows behind a 0.5 s delay: every row out once, in order, in bounded memory."""
    import signal
    import time

    from helpers import spawn

    n = 1_000_000
    src, dst = tmp_path / "million.csv", tmp_path / "out.csv"
    items = ["apple", "pear", "banana", "café crème"]
    with src.open("w", encoding="utf-8") as f:
        f.write("id,item,quantity,note\n")
        f.writelines(f"{i},{items[i % 4]},{i % 97 + 1},n{i}\n" for i in range(n))
    host, port = server.address
    proxy, line = spawn(
        ["fault_proxy.py", "--listen", "127.0.0.1:0", "--upstream", f"{host}:{port}", "--delay", "0.5", "--seed", "3"],
        "fault_proxy:",
    )
    try:
        # A small parent runs the client and reports its peak RSS: a child forked from pytest itself
        # would count pytest's pages as its own until exec.
        parent = subprocess.Popen(
            [PY, "-c", RSS_PARENT, PY, "udp_client.py", "--server", line.split()[1], "bulk", str(src), "-o", str(dst)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert parent.stdout is not None
        client_pid = int(parent.stdout.readline())
        deadline = time.monotonic() + 30
        while not (dst.exists() and dst.stat().st_size > 0) and time.monotonic() < deadline:
            time.sleep(0.01)  # polling for the run to have started (header written), not a fixed wait
        time.sleep(1.0)  # the scenario: the signal comes one second into the run
        os.kill(client_pid, signal.SIGTERM)
        out, err = parent.communicate(timeout=120)
        returncode, peak_kb = map(int, out.split())
    finally:
        proxy.terminate()
        proxy.communicate(timeout=10)
    assert returncode == 130 and "Traceback" not in err, err
    peak_mb = peak_kb / 1024
    print(f"peak RSS {peak_mb:.1f} MB; {err.splitlines()[-1]}")
    assert peak_mb < 60, f"peak RSS {peak_mb:.1f} MB"
    assert f"udp_client: bulk: rows={n} " in err and "stopped sending" in err
    statuses: dict[str, int] = {}
    with dst.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        assert next(reader) == [
            "id",
            "item",
            "quantity",
            "note",
            "unit_price",
            "total",
            "status",
            "attempts",
            "error",
            "catalog_version",
        ]
        for i, row in enumerate(reader):
            assert row[:4] == [str(i), items[i % 4], str(i % 97 + 1), f"n{i}"], "every cell, in order"
            statuses[row[6]] = statuses.get(row[6], 0) + 1
    # Requests in flight at the signal are cancelled (NOT_ATTEMPTED); rows after them that had
    # already been answered or given up are written with that status.
    assert set(statuses) <= {"OK", "NO_ANSWER", "DEADLINE", "RETRY_BUDGET", "NOT_ATTEMPTED", "INTERRUPTED"}, statuses
    assert sum(statuses.values()) == n and statuses["NOT_ATTEMPTED"] > 0.9 * n, statuses


def test_output_that_cannot_be_opened_is_exit_4(tmp_path: Path) -> None:
    src = tmp_path / "o.csv"
    src.write_text("item,quantity\napple,1\n", "utf-8")
    r = bulk(None, src, "-o", tmp_path / "no" / "such" / "dir.csv")
    err = clean(r, 4)
    assert err.count("\n") == 1 and "cannot open for writing: No such file or directory" in err


def test_closed_pipe_is_exit_4_with_the_summary(server: RunningServer, tmp_path: Path) -> None:
    src = tmp_path / "many.csv"
    src.write_text("item,quantity\n" + "apple,1\n" * 50_000, "utf-8")
    proc = subprocess.Popen(
        [PY, "udp_client.py", *server_arg(server), "bulk", str(src), "--no-progress"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline() == b"item,quantity,unit_price,total,status,attempts,error,catalog_version\n"
    proc.stdout.close()  # like '| head -1'
    err = proc.stderr.read().decode("utf-8")
    assert proc.wait(timeout=60) == 4 and "Traceback" not in err and "Exception ignored" not in err
    assert "udp_client: stdout: cannot write (" in err and "Broken pipe" in err and "udp_client: bulk: rows=" in err
