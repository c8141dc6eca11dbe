"""Reading the orders file many rows at a time, with exactly the rows the line-by-line reader makes.

Most order files are plain: no quotes, no NUL, no lone CR, valid in their encoding. For those,
``row_chunks`` takes every whole line already buffered as one block, decodes it with one call,
splits it with ``str.split`` and validates each row against small caches of the item names and
quantities already seen (an orders file repeats a few thousand names). That cuts the per-row
cost of reading to a fraction of the line-by-line path.

Any block that is not plain (a quote anywhere, a NUL, a CR that is not part of CRLF, a byte
that does not decode, a lone surrogate) is handed line by line to the RFC 4180 reader in
``udp_price.bulk.reader`` instead, so every rule there (multi-line records, BAD_ROW per bad
line, kept cells) holds unchanged: the fast path only ever takes lines whose parse is a plain
split. tests/test_bulk_chunks.py checks both paths give the same rows for the same bytes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from udp_price.bulk.reader import ROW_OVERHEAD, Header, RecordReader, Row, parse_row
from udp_price.errors import BadQuantity
from udp_price.wire import item_problem, normalize_item
from udp_price.wire.items import parse_quantity
from wire_format import ITEM_SIZE

BLOCK_BYTES = 1 << 20
"""Most bytes taken as one block (whole lines only); the reader's reads are 64 KB anyway."""
CHUNK_ROWS = 512
"""Most rows handed on at once: the read-ahead bound is counted in rows, so chunks stay small."""
CACHE_SIZE = 8192
"""Distinct item cells and quantity cells remembered (cleared when full: memory stays bounded)."""
_SURROGATE = re.compile("[\ud800-\udfff]")
_PHYSICAL_LINE = re.compile(rb"[^\r\n]*(?:\r\n?|\n)")
"""One physical line as ChunkLines.readline splits them: LF, CRLF or a lone CR ends it."""


def _placed(row: Row, end: int, size: int) -> Row:
    row.end, row.size, row.next_line = end, size, row.line + 1
    return row


class RowValidator:
    """``parse_row`` for a record that parsed cleanly, with the item and quantity checks cached."""

    def __init__(self, header: Header) -> None:
        self.header = header
        self.width = len(header.columns)
        self._items: dict[str, tuple[str, str | None]] = {}
        self._quantities: dict[str, int | str] = {}

    def row(self, seq: int, line_no: int, cells: list[str], end: int, size: int) -> Row:
        """The row, its progress fields (end, size, next line) set; a valid row is made with one
        positional call, the cheapest way CPython builds it (this runs once per input row)."""
        if len(cells) != self.width:
            return _placed(parse_row(self.header, seq, line_no, cells), end, size)
        checked = self._items.get(raw := cells[self.header.item])
        if checked is None:
            checked = self._check_item(raw)
        item, problem = checked
        if problem is not None:
            return _placed(Row(seq, line_no, cells, item=item, error=f"line {line_no}: {problem}"), end, size)
        quantity = self._quantities.get(text := cells[self.header.quantity])
        if quantity is None:
            quantity = self._check_quantity(text)
        if isinstance(quantity, str):
            return _placed(Row(seq, line_no, cells, item=item, error=f"line {line_no}: {quantity}"), end, size)
        return Row(seq, line_no, cells, item, quantity, "", end, size, line_no + 1)

    def _check_item(self, raw: str) -> tuple[str, str | None]:
        # same rule as parse_row: NFC can only shrink a name a few times over
        item = normalize_item(raw) if len(raw) <= 8 * ITEM_SIZE else raw.strip()
        checked = (item, item_problem(item))
        if len(self._items) >= CACHE_SIZE:
            self._items.clear()
        self._items[raw] = checked
        return checked

    def _check_quantity(self, text: str) -> int | str:
        try:
            quantity: int | str = parse_quantity(text)
        except BadQuantity as e:
            quantity = str(e)
        if len(self._quantities) >= CACHE_SIZE:
            self._quantities.clear()
        self._quantities[text] = quantity
        return quantity


def row_chunks(
    reader: RecordReader, header: Header, skip_checks: Callable[[], bool] | None = None, fast: bool = True
) -> Iterator[list[Row]]:
    """Rows in file order, in lists of at most CHUNK_ROWS, lazily; the same rows ``rows_of`` makes.
    While ``skip_checks()`` is true the rows are not validated (see rows_of). ``fast=False``
    reads line by line only (the reference the tests compare against)."""
    state = _State(reader, header, skip_checks)
    while True:
        if fast and not reader._ahead and reader.lines_read >= 1:
            block = _take_block(reader)
            if block is None:
                return
            if block:
                if not _plain_block(state, block):
                    _queue_lines(reader, block)  # the line-by-line reader takes these
                yield from state.flush()
                continue
        record = next(reader.records(), None)
        if record is None:
            yield from state.flush()
            return
        state.add_record(*record)
        if not fast or len(state.rows) >= CHUNK_ROWS:
            yield from state.flush()


class _State:
    """Rows made so far and the bookkeeping rows_of keeps (sequence number, end of the last record)."""

    def __init__(self, reader: RecordReader, header: Header, skip_checks: Callable[[], bool] | None) -> None:
        self.reader, self.header, self.skip_checks = reader, header, skip_checks
        self.validator = RowValidator(header)
        self.seq = 0
        self.before = reader.bytes_read - sum(x.size for x in reader._ahead)
        self.rows: list[Row] = []

    def add_record(self, line: object, cells: list[str], error: str) -> None:
        number, end = line.number, line.end  # type: ignore[attr-defined]
        if self.skip_checks is not None and self.skip_checks():
            row = Row(self.seq, number, cells, error=error)
        else:
            row = parse_row(self.header, self.seq, number, cells, error)
        row.end, row.size, row.next_line = end, ROW_OVERHEAD + max(0, end - self.before), self.reader.next_line
        self.before = end
        self.seq += 1
        self.rows.append(row)

    def flush(self) -> Iterator[list[Row]]:
        rows, self.rows = self.rows, []
        for i in range(0, len(rows), CHUNK_ROWS):
            yield rows[i : i + CHUNK_ROWS]


def _take_block(reader: RecordReader) -> bytes | None:
    """Whole buffered lines, b'' when the line-by-line reader must go on, None at a read error."""
    try:
        return reader.lines.take_block(BLOCK_BYTES)
    except OSError as e:  # ends the input, as in RecordReader._read_line
        reader.read_error, reader._eof = e, True
        return None


def _plain_block(state: _State, block: bytes) -> bool:
    """Make the rows of a plain block (True), or leave it untouched (False: not plain)."""
    reader = state.reader
    if b'"' in block or b"\0" in block:
        return False
    crlf = block.count(b"\r")
    if crlf and crlf != block.count(b"\r\n"):
        return False
    try:
        text = block.decode(reader.encoding)
    except UnicodeDecodeError:
        return False
    if _SURROGATE.search(text) is not None:
        return False
    texts = text.split("\n")
    sizes = block.split(b"\n")
    if len(texts) != len(sizes):  # a multi-byte encoding whose bytes hide a LF: not plain
        return False
    texts.pop()  # the block ends in LF: the last piece is empty
    _make_rows(state, texts, [len(b) + 1 for b in sizes[:-1]], bool(crlf))
    return True


def _make_rows(state: _State, texts: list[str], sizes: list[int], crlf: bool) -> None:
    reader, delimiter, validator = state.reader, state.header.delimiter, state.validator
    skip = state.skip_checks is not None and state.skip_checks()
    number, end, before, seq = reader.lines_read, reader.bytes_read, state.before, state.seq
    rows = state.rows
    for text, size in zip(texts, sizes, strict=True):
        number += 1
        end += size
        body = text[:-1] if crlf and text.endswith("\r") else text  # each line ends in CRLF or LF
        if not body or body.isspace():
            continue  # blank lines are skipped (their bytes count toward the next row's size)
        cells = body.split(delimiter)
        size = ROW_OVERHEAD + end - before
        if skip:
            row = Row(seq, number, cells, "", 0, "", end, size, number + 1)
        else:
            row = validator.row(seq, number, cells, end, size)
        before = end
        seq += 1
        rows.append(row)
    reader._line_no, reader.bytes_read = number, end
    state.before, state.seq = before, seq


def _queue_lines(reader: RecordReader, block: bytes) -> None:
    """Hand a block that is not plain to the line-by-line reader, line by line, as it would read them."""
    for data in _PHYSICAL_LINE.findall(block):
        reader._line_no += 1
        reader.bytes_read += len(data)
        reader._ahead.append(reader._decode(data))
