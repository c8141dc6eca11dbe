"""The chunked bulk paths give exactly what the row-at-a-time paths give (see udp_price/bulk/chunks.py).

- Reading: ``row_chunks`` (whole blocks parsed at once when plain) must make the same rows,
  field for field, as ``rows_of`` (line by line, RFC 4180), for any bytes, cut into reads of
  any size: bad lines stay isolated BAD_ROWs with their own line numbers, order is kept and
  nothing is lost or merged.
- Writing: ``CsvSink.write_rows`` / ``Output.write_records`` write the same bytes as one
  ``write`` per row, count the records that reached the file, and a row the output cannot
  encode still costs only that row (a BAD_ROW), never its neighbours.
- ``QuoteClient.quote_stream`` yields one exact answer per pair, in input order; a bad pair
  raises where it stands, after every pair before it.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import tempfile
from collections.abc import Iterator

import pytest
from helpers import RunningServer, expected_prices
from hypothesis import given, settings
from hypothesis import strategies as st

from udp_price.bulk.chunks import CHUNK_ROWS, row_chunks
from udp_price.bulk.feed import ChunkLines
from udp_price.bulk.reader import RecordReader, Row, read_header, rows_of
from udp_price.bulk.results import BAD_ROW, CsvSink, JsonlSink, OrderedWriter, RowResult, Summary
from udp_price.bulk.writer import Output
from udp_price.client.api import QuoteClient

PIECES = ["apple", "pear", ",", ";", "\t", '"', '""', "\n", "\r", "\r\n", " ", "7", "0", "x" * 40, "é", "\x00"]
BYTES = [p.encode() for p in PIECES] + [b"\xff", b"\xe9"]


def fields(row: Row) -> tuple[object, ...]:
    return tuple(getattr(row, name) for name in Row.__slots__)


def reader_of(data: bytes, read_size: int, encoding: str = "utf-8") -> RecordReader:
    stream = io.BytesIO(data)
    return RecordReader(ChunkLines(lambda n: stream.read(min(n, read_size))), encoding)


def both(data: bytes, read_size: int, encoding: str = "utf-8") -> tuple[list[tuple[object, ...]], ...]:
    """(rows by rows_of, rows by row_chunks) plus each reader's final counters, for the same bytes."""
    ref, fast = reader_of(data, read_size, encoding), reader_of(data, read_size, encoding)
    expected = [fields(r) for r in rows_of(ref, read_header(ref))]
    got = [fields(r) for chunk in row_chunks(fast, read_header(fast)) for r in chunk]
    return expected, got, [(ref.lines_read, ref.bytes_read)], [(fast.lines_read, fast.bytes_read)]


@settings(max_examples=300, deadline=None)
@given(
    body=st.lists(st.sampled_from(BYTES), max_size=200),
    read_size=st.sampled_from([1, 3, 7, 64, 1 << 16]),
    header=st.sampled_from([b"item,quantity,note\n", b"item;quantity\r\n", b"quantity\titem\r\n"]),
    encoding=st.sampled_from(["utf-8", "latin-1"]),
    bom=st.booleans(),
)
def test_chunked_reading_makes_the_same_rows_as_line_by_line(
    body: list[bytes], read_size: int, header: bytes, encoding: str, bom: bool
) -> None:
    start = b"\xef\xbb\xbf" if bom and encoding == "utf-8" else b""
    expected, got, ref_counts, fast_counts = both(start + header + b"".join(body), read_size, encoding)
    assert got == expected
    assert fast_counts == ref_counts


def test_bad_lines_among_plain_ones_are_isolated_in_order_and_nothing_is_lost() -> None:
    good = [f"{i},apple,{i % 9 + 1}\n" for i in range(5000)]
    bad = {
        100: "100,apple,zero\n",
        1999: '1999,"apple,3\n',  # an unclosed quote: its own BAD_ROW, the next line read again
        3000: "3000,\xffpear,2\n",
        4998: "4998,apple\n",
    }
    text = "order,item,quantity\n" + "".join(bad.get(i, line) for i, line in enumerate(good))
    data = text.encode("utf-8").replace("\xff".encode(), b"\xff")
    reader = reader_of(data, 1 << 16)
    chunks = list(row_chunks(reader, read_header(reader)))
    rows = [r for chunk in chunks for r in chunk]
    assert all(0 < len(c) <= CHUNK_ROWS for c in chunks)
    assert [r.seq for r in rows] == list(range(5000))
    assert [r.line for r in rows] == list(range(2, 5002))
    assert [r.cells[0].split(",")[0] for r in rows] == [str(i) for i in range(5000)]  # a broken record: one cell
    assert {r.seq for r in rows if r.error} == set(bad)
    assert rows[100].error.startswith("line 102: quantity")
    assert rows[1999].error.startswith("line 2001: a quoted field is not closed")
    assert rows[3000].error.startswith("line 3002: not valid utf-8")
    assert rows[4998].error == "line 5000: expected 3 columns, got 2"
    assert all(r.quantity == int(r.cells[2]) and r.item == "apple" for r in rows if not r.error)


def _run_of(n: int) -> list[tuple[Row, RowResult]]:
    notes = ["plain", "a,comma", 'a "quote"', "cr\rinside", "lf\ninside", "crlf\r\ninside", "é ü", ""]
    pairs = []
    for i in range(n):
        cells = [str(i), "apple", str(i % 7 + 1), notes[i % len(notes)]][: 4 - (i % 5 == 0)]  # some rows short
        if i % 11 == 0:
            cells.append("extra")
        ok = RowResult("OK", 50, 50 * (i % 7 + 1), 1, catalog_version=9)
        failed = RowResult("NO_ANSWER", None, None, 3, "no answer, it said")
        pairs.append((Row(i, i + 2, cells, end=i), ok if i % 3 else failed))
    return pairs


def test_write_rows_writes_what_write_writes_row_by_row() -> None:
    pairs = _run_of(200)
    header = RecordReader(io.BytesIO(b"order,item,quantity,note\n"))
    h = read_header(header)
    for sink_type in (CsvSink, JsonlSink):
        one, many = io.StringIO(), io.StringIO()
        by_row, at_once = sink_type(one, h), sink_type(many, h)
        for row, outcome in pairs:
            by_row.write(row, outcome)
        at_once.write_rows(pairs[:77])
        at_once.write_rows(pairs[77:])
        assert many.getvalue() == one.getvalue()
        assert at_once.done_bytes == by_row.done_bytes == 199
        if sink_type is CsvSink:  # the header, then every row once (cells with CR/LF stay quoted)
            assert len(list(csv.reader(io.StringIO(one.getvalue())))) == 201
        else:
            assert len(one.getvalue().splitlines()) == 200


def test_output_write_records_counts_records_that_reached_the_file() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        fd = os.open(os.path.join(tmp, "out"), os.O_WRONLY | os.O_CREAT)
        out = Output(fd, "out", True)
        texts = [f"{i},é\n" if i % 2 else f"{i},a\n" for i in range(10_000)]
        out.write_records(texts[:5000])
        out.write_records(texts[5000:])
        assert out.close() is None
        assert out.records_written() == 10_000
        with open(os.path.join(tmp, "out"), encoding="utf-8") as f:
            assert f.read() == "".join(texts)


@pytest.mark.parametrize("batched", [True, False])
def test_a_row_the_output_cannot_encode_costs_only_that_row(batched: bool) -> None:
    """Batched (all encoded before any is written) or a plain function called per row: either
    way the unencodable row is one BAD_ROW and no row is written twice or lost."""
    written: list[str] = []

    def write_many(texts: list[str]) -> None:
        data = "".join(texts).encode("utf-8")  # like Output.write_records: all encoded before any is written
        written.extend(data.decode().splitlines(keepends=True))

    header = read_header(RecordReader(io.BytesIO(b"item,quantity,note\n")))
    sink = CsvSink(lambda text: written.append(text.encode("utf-8").decode()), header, write_many if batched else None)
    written.clear()  # the header row
    summary = Summary()
    writer = OrderedWriter(sink, summary, lambda n, b: None, lambda e: None)
    rows = [Row(i, i + 2, ["apple", "1", "\ud800" if i == 3 else "ok"]) for i in range(6)]
    ok = RowResult("OK", 50, 50, 1)
    writer.complete_many(rows[4:], [ok, ok])  # early finishers are held
    assert written == []
    writer.complete_many(rows[:4], [ok] * 4)
    assert len(written) == 6 and summary.rows == 6
    assert [w.split(",")[5] for w in written] == ["OK", "OK", "OK", BAD_ROW, "OK", "OK"]
    assert summary.by_status == {"OK": 5, BAD_ROW: 1}


def pairs(n: int) -> Iterator[tuple[str, int]]:
    names = sorted(expected_prices())
    for i in range(n):
        yield names[i % len(names)], i % 50 + 1


def test_quote_stream_yields_every_answer_exact_and_in_order(server: RunningServer) -> None:
    prices = expected_prices()

    async def run() -> list[tuple[str, int, int, int]]:
        async with QuoteClient(server.address) as client:
            return [(q.item, q.quantity, q.unit_price, q.total) async for q in client.quote_stream(pairs(3000), 7, 16)]

    got = asyncio.run(run())
    assert got == [(item, q, prices[item], prices[item] * q) for item, q in pairs(3000)]


def test_quote_stream_takes_an_async_iterable_and_stops_at_a_bad_pair_in_place(server: RunningServer) -> None:
    async def source() -> Iterator[tuple[str, int]]:  # type: ignore[misc]
        for i, pair in enumerate(pairs(100)):
            yield ("apple", 0) if i == 60 else pair

    async def run() -> tuple[list[tuple[str, int]], BaseException | None]:
        seen: list[tuple[str, int]] = []
        async with QuoteClient(server.address) as client:
            try:
                async for q in client.quote_stream(source(), batch=32):
                    assert q.ok
                    seen.append((q.item, q.quantity))
            except ValueError as e:
                return seen, e
        return seen, None

    seen, error = asyncio.run(run())
    assert seen == list(pairs(60))  # every pair before the bad one, in order, and none after
    assert error is not None and "quantity 0" in str(error)
