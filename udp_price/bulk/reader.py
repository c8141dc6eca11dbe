"""Reading the bulk command's orders file: bytes -> records -> validated rows, never a traceback.

Every problem with one record (bytes that are not valid in the input encoding, broken quoting,
a record too long, a bad quantity) becomes a BAD_ROW for that record, with its line number and
every input cell kept; only an unusable header stops the run (exit 2).

- Bytes are split into physical lines first (a line ends in LF, CRLF or a lone CR) and each
  line is decoded on its own, so one bad byte costs one record, wherever it is in the file.
  Only encodings in which ASCII text decodes to itself are accepted (UTF-8, Latin-1, cp1252,
  ...): the structure bytes must mean the same in every line, and escape-style codecs (UTF-7,
  unicode_escape, ...) that can turn ASCII into other text, lone surrogates included, are
  refused. A decoded line that still holds a lone surrogate is a BAD_ROW (its cells escaped).
  A UTF-8 byte order mark at the start of the file is skipped.
- Records follow RFC 4180: a quoted field may contain the delimiter, `""` and line breaks. A
  record may span at most MAX_RECORD_LINES physical lines and MAX_RECORD_BYTES bytes, and is
  taken only if it then parses cleanly with the header's column count; otherwise its first line
  alone is a BAD_ROW and reading resumes on the next line, so a stray quote costs one record.
- A physical line longer than MAX_RECORD_BYTES is skipped in bounded memory (BAD_ROW, cells not
  kept): memory per record is bounded whatever the file holds.
"""

from __future__ import annotations

import codecs
import csv
import re
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

from udp_price.bulk.feed import ChunkLines
from udp_price.errors import BadQuantity, BulkInputError
from udp_price.wire import item_problem, normalize_item
from udp_price.wire.items import parse_quantity
from wire_format import ITEM_SIZE

MAX_RECORD_LINES = 100
"""Physical lines one record (a quoted field with line breaks) may span."""
MAX_RECORD_BYTES = 16 * 1024 * 1024
"""Bytes one record may take, line breaks included; also the longest physical line that is kept."""
ROW_OVERHEAD = 320
"""Bytes a held Row costs beyond its input bytes (its objects and cell strings), for the read-ahead bound."""
DELIMITERS = {",": ",", ";": ";", "tab": "\t", "\t": "\t"}
"""--delimiter values; 'auto' picks whichever of these makes the header name item and quantity."""
UTF8_BOM = codecs.BOM_UTF8
_ASCII_PROBES = (bytes(range(128)), b"+2ADYAA-", b"\\ud800\\x41", b"xn--ls8h", b"~{", b"\x1b$B", b"=?")
"""ASCII text that must decode to itself: all of ASCII, then UTF-7, escape, punycode, HZ and
ISO-2022 shift sequences (each codec that rewrites ASCII fails one of them)."""
_SURROGATE = re.compile("[\ud800-\udfff]")

csv.field_size_limit(MAX_RECORD_BYTES)  # the csv module's default (128 KB) would reject long notes


def check_encoding(name: str) -> str:
    """The codec's canonical name, or BulkInputError: unknown, or not ASCII-compatible (UTF-16)."""
    try:
        info = codecs.lookup(name)
    except LookupError:
        raise BulkInputError(f"--encoding {name!r}: no such encoding") from None
    codec = "utf-8" if info.name == "utf-8-sig" else info.name  # -sig only adds a BOM at the start
    if not _ascii_is_itself(codec):
        raise BulkInputError(
            f"--encoding {name!r}: only encodings in which ASCII text reads as itself are supported "
            "(e.g. utf-8, latin-1, cp1252; not UTF-16/32, UTF-7 or escape codecs)"
        )
    return codec


def _ascii_is_itself(codec: str) -> bool:
    """Does every probe decode to itself, and ASCII encode to itself? (a text codec that round-trips ASCII)"""
    if not getattr(codecs.lookup(codec), "_is_text_encoding", True):
        return False
    try:
        return all(p.decode(codec) == p.decode("ascii") and p.decode("ascii").encode(codec) == p for p in _ASCII_PROBES)
    except (UnicodeError, LookupError, ValueError, TypeError):
        return False


@dataclass(slots=True)
class Row:
    """One input record. ``error`` set means it is not sent; it is still written out, every cell kept."""

    seq: int
    line: int
    cells: list[str]
    item: str = ""
    quantity: int = 0
    error: str = ""
    end: int = 0
    """Input bytes consumed up to the end of this record (for progress)."""
    size: int = 0
    """What this record costs while held: its input bytes plus ROW_OVERHEAD (the read-ahead is bounded in bytes too)."""
    next_line: int = 0
    """The physical line after this record (where an interrupted copy would resume)."""


@dataclass
class Header:
    columns: list[str]
    item: int
    quantity: int
    delimiter: str = ","


@dataclass(slots=True)
class _Line:
    number: int
    text: str
    """Decoded line, terminator kept; for an undecodable line, decoded with backslash escapes."""
    size: int
    end: int
    error: str = ""
    too_long: bool = False


class RecordReader:
    """Physical lines of a binary stream -> RFC 4180 records, with bounded look-ahead.

    A read error (EIO, a vanished network file) ends the input: ``read_error`` keeps it and the
    records read before it are still delivered.
    """

    def __init__(self, stream: IO[bytes] | ChunkLines, encoding: str = "utf-8") -> None:
        if isinstance(stream, ChunkLines):
            self.lines = stream
        else:  # read1: what is there now, never waiting for a full chunk from a pipe
            self.lines = ChunkLines(getattr(stream, "read1", None) or stream.read)
        self.encoding = check_encoding(encoding)
        self.bytes_read = 0
        self.read_error: OSError | None = None
        self.delimiter = ","
        self.width = 0
        """Columns a multi-line record must have to be taken; 0 while reading the header."""
        self._ahead: deque[_Line] = deque()
        self._line_no = 0
        self._eof = False

    @property
    def lines_read(self) -> int:
        """Physical lines read so far."""
        return self._line_no

    # -------------------------------------------------------------- physical lines

    def _read_line(self) -> _Line | None:
        if self._eof:
            return None
        try:
            data = self.lines.readline(MAX_RECORD_BYTES + 1)
            if len(data) > MAX_RECORD_BYTES and not data.endswith((b"\n", b"\r")):
                return self._skip_long_line(len(data))
        except OSError as e:
            self.read_error, self._eof = e, True
            return None
        if not data:
            self._eof = True
            return None
        self._line_no += 1
        self.bytes_read += len(data)
        if self._line_no == 1 and data.startswith(UTF8_BOM) and self.encoding == "utf-8":
            data = data[len(UTF8_BOM) :]
        return self._decode(data)

    def _decode(self, data: bytes) -> _Line:
        try:
            text = data.decode(self.encoding)
            if (s := _SURROGATE.search(text)) is not None:
                why = (
                    f"line {self._line_no}: decodes to a lone surrogate (U+{ord(s.group()):04X}), which no output can "
                    "hold; its cells are kept with \\u escapes"
                )
                text = text.encode("utf-8", "backslashreplace").decode("utf-8")
                return _Line(self._line_no, text, len(data), self.bytes_read, why)
            return _Line(self._line_no, text, len(data), self.bytes_read)
        except UnicodeDecodeError as e:
            why = (
                f"line {self._line_no}: not valid {self.encoding} (byte 0x{data[e.start]:02x} at offset {e.start}); "
                "its cells are kept with \\x escapes"
            )
            return _Line(self._line_no, data.decode(self.encoding, "backslashreplace"), len(data), self.bytes_read, why)

    def _skip_long_line(self, size: int) -> _Line:
        """Discard the rest of a line over the bound without holding it (raises OSError like read)."""
        self._line_no += 1
        chunk = b""
        while not chunk.endswith((b"\n", b"\r")):
            chunk = self.lines.readline(1 << 20)
            if not chunk:
                break
            size += len(chunk)
        self.bytes_read += size
        why = f"line {self._line_no}: longer than {MAX_RECORD_BYTES:,} bytes ({size:,}); its cells are not kept"
        return _Line(self._line_no, "", size, self.bytes_read, why, too_long=True)

    def _peek(self, k: int) -> _Line | None:
        while len(self._ahead) <= k:
            line = self._read_line()
            if line is None:
                return None
            self._ahead.append(line)
        return self._ahead[k]

    # -------------------------------------------------------------- records

    def records(self) -> Iterator[tuple[_Line, list[str], str]]:
        """(first line, cells, error) per record; blank lines are skipped."""
        while (first := self._peek(0)) is not None:
            if not first.too_long and not first.text.strip():
                self._ahead.popleft()
                continue
            line, cells, error, taken = self._find_record(first)
            for _ in range(taken):
                self._ahead.popleft()
            yield line, cells, error

    @property
    def next_line(self) -> int:
        """The first physical line not yet taken by a record (read ahead or not)."""
        return self._ahead[0].number if self._ahead else self._line_no + 1

    def _find_record(self, first: _Line) -> tuple[_Line, list[str], str, int]:
        """(line, cells, error, physical lines it takes) of the record starting at ``first``; reads ahead only."""
        if first.too_long:
            return first, [], first.error, 1
        if not ends_inside_quotes(first.text, False, self.delimiter):
            cells, error = self._parse(first.text, first)
            return first, cells, first.error or error, 1
        multi = self._multi_line(first)
        if multi is not None:
            return multi
        why = (
            f"line {first.number}: a quoted field is not closed on this line, and with the lines after it "
            f"(at most {MAX_RECORD_LINES} lines, {MAX_RECORD_BYTES // 2**20} MiB) it does not make a valid record"
        )
        return first, [first.text.rstrip("\r\n")], first.error or why, 1

    def _multi_line(self, first: _Line) -> tuple[_Line, list[str], str, int] | None:
        """The record starting at ``first`` if it closes within the bounds and parses cleanly, else None."""
        size, k = first.size, 1
        while k < MAX_RECORD_LINES:
            line = self._peek(k)
            if line is None or line.too_long or size + line.size > MAX_RECORD_BYTES:
                return None
            size += line.size
            k += 1
            if not ends_inside_quotes(line.text, True, self.delimiter):
                lines = [self._ahead[i] for i in range(k)]
                cells, error = self._parse("".join(x.text for x in lines), first)
                if error or (self.width and len(cells) != self.width):
                    return None
                decode_error = next((x.error for x in lines if x.error), "")
                return _Line(first.number, "", size, line.end), cells, decode_error, k
        return None

    def _parse(self, text: str, first: _Line) -> tuple[list[str], str]:
        body = text[:-1] if text.endswith("\n") else text
        body = body[:-1] if body.endswith("\r") else body  # CRLF, or a lone CR
        try:
            return next(csv.reader([body], delimiter=self.delimiter, strict=True), [""]), ""
        except csv.Error as e:
            return [body], f"line {first.number}: broken CSV: {e}"


def ends_inside_quotes(text: str, inside: bool, delimiter: str) -> bool:
    """Is a quoted field still open at the end of ``text``, given whether one was open at its start?

    Mirrors the csv module: a quote opens a field only at the start of the field, `""` inside a
    quoted field is a literal quote, and a quote anywhere else is an ordinary character.
    """
    if not inside and '"' not in text:
        return False
    pos = 0
    while True:
        if inside:
            q = text.find('"', pos)
            if q < 0:
                return True
            if text.startswith('"', q + 1):
                pos = q + 2
                continue
            inside, pos = False, q + 1
        elif text.startswith('"', pos):
            inside, pos = True, pos + 1
            continue
        d = text.find(delimiter, pos)
        if d < 0:
            return False
        pos = d + 1


# ------------------------------------------------------------------ header and rows


def read_header(reader: RecordReader, delimiter: str = "auto") -> Header:
    """The first record as the header (consumed); BulkInputError when it is unusable."""
    first = reader._peek(0)
    if first is None:
        if reader.read_error is not None:
            raise reader.read_error
        raise BulkInputError("empty input: expected a header naming 'item' and 'quantity'")
    if first.too_long or not first.text.strip():
        raise BulkInputError("line 1: expected the header (naming 'item' and 'quantity') on line 1")
    candidates = list(dict.fromkeys(DELIMITERS.values())) if delimiter == "auto" else [DELIMITERS[delimiter]]
    found: list[tuple[Header, int]] = []
    errors: list[str] = []
    for d in candidates:
        reader.delimiter = d
        _, columns, error, taken = reader._find_record(first)
        names = [c.strip().lower() for c in columns]
        if error:
            errors.append(error)
        elif "item" in names and "quantity" in names:
            found.append((Header(columns, names.index("item"), names.index("quantity"), d), taken))
    if not found:
        tried = " or ".join(repr(d) for d in candidates)
        raise BulkInputError(
            errors[0]
            if errors
            else f"line 1: header must name 'item' and 'quantity' columns (delimiter {tried}), "
            f"got {first.text.strip()[:200]!r}"
        )
    header, taken = max(found, key=lambda f: len(f[0].columns))
    reader.delimiter, reader.width = header.delimiter, len(header.columns)
    for _ in range(taken):
        reader._ahead.popleft()
    return header


def parse_row(header: Header, seq: int, line_no: int, cells: list[str], error: str = "") -> Row:
    """Validate one record. Never raises: problems go into ``Row.error``; ``cells`` are all kept."""
    row = Row(seq, line_no, cells)
    if error:
        row.error = error
        return row
    if len(cells) != len(header.columns):
        row.error = f"line {line_no}: expected {len(header.columns)} columns, got {len(cells)}"
        return row
    raw_item = cells[header.item]
    # NFC can only shrink a name a few times over, so a long cell is too long without normalizing it
    row.item = normalize_item(raw_item) if len(raw_item) <= 8 * ITEM_SIZE else raw_item.strip()
    problem = item_problem(row.item)
    if problem is not None:
        row.error = f"line {line_no}: {problem}"
    else:
        try:
            row.quantity = parse_quantity(cells[header.quantity])
        except BadQuantity as e:
            row.error = f"line {line_no}: {e}"
    return row


def rows_of(reader: RecordReader, header: Header, skip_checks: Callable[[], bool] | None = None) -> Iterator[Row]:
    """Rows in file order, lazily. While ``skip_checks()`` is true (after an interrupt, when the rest
    is only copied out as NOT_ATTEMPTED) rows carry their cells and line but are not validated."""
    before = reader.bytes_read - sum(x.size for x in reader._ahead)
    for seq, (line, cells, error) in enumerate(reader.records()):
        if skip_checks is not None and skip_checks():
            row = Row(seq, line.number, cells, error=error)
        else:
            row = parse_row(header, seq, line.number, cells, error)
        row.end, row.size, row.next_line = line.end, ROW_OVERHEAD + max(0, line.end - before), reader.next_line
        before = line.end
        yield row
