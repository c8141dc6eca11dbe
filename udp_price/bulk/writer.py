"""Writing the bulk command's results: the output target, column names, CSV and JSONL records.

- The output is refused if it is the input itself (same device and inode, however it is named:
  a path, a hard link, a symlink, or stdout redirected onto the input file). On top of that, a
  regular-file output (``-o PATH``) is written to a temporary file in the same directory and
  renamed onto PATH only at the end, so the input is never truncated while it is read, even
  when the two names reach one file through different devices (overlayfs, where device and
  inode differ). If the output fails, PATH is left as it was and the partial output is kept
  under the temporary name (announced by the caller). If the directory is not writable, PATH
  is written in place (and only the same-file check protects the input).
- Result columns never collide with input columns: a result column whose name the input header
  already has (exact match) is called ``quote_<name>``, or ``quote_quote_<name>`` if that is
  taken too, and so on. In JSONL, a repeated input column name gets ``_2``, ``_3``, ... so no
  key is overwritten; in CSV the input header is copied as it is.
- A record with more cells than the header keeps them all: in CSV the surplus cells follow the
  result columns; in JSONL they are a list under ``extra_cells``.
- Every OSError at write, flush or close is caught and reported by the caller; nothing here
  raises past ``Output.close``.
"""

from __future__ import annotations

import io
import json
import os
import stat
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from udp_price.bulk.reader import Header
from udp_price.errors import BulkInputError

RESULT_PREFIX = "quote_"


def free_name(name: str, taken: Iterable[str]) -> str:
    """``name``, prefixed with ``quote_`` as many times as needed to differ from every name in ``taken``."""
    used = set(taken)
    while name in used:
        name = RESULT_PREFIX + name
    return name


def result_names(names: Sequence[str], taken: Sequence[str]) -> list[str]:
    """The result columns' names as written next to input columns ``taken``."""
    return [free_name(n, taken) for n in names]


def unique_keys(columns: Sequence[str]) -> list[str]:
    """Input column names with repeats renamed ``name_2``, ``name_3``, ... (for JSON objects)."""
    taken, used = set(columns), set[str]()
    last: dict[str, int] = {}  # per name, the last suffix tried: each candidate is tried once (linear)
    keys: list[str] = []
    for name in columns:
        key = name
        if key in used:
            n = last.get(name, 1)
            while True:
                n += 1
                key = f"{name}_{n}"
                if key not in used and key not in taken:
                    break
            last[name] = n
        used.add(key)
        keys.append(key)
    return keys


class _Calls:
    """A file-like ``write`` that hands each string to a function (csv.writer writes a row at once)."""

    def __init__(self, write: Callable[[str], object]) -> None:
        self.write = write


class CsvRecords:
    """CSV out: the input header as it is, then the result columns (renamed by the collision rule)."""

    def __init__(self, write: Callable[[str], object], header: Header, results: Sequence[str]) -> None:
        import csv

        # "\r\n" makes the writer quote every cell holding a CR (with "\n" a lone CR went out bare and
        # split the record for any reader); each record's CRLF is then written as LF.
        self.writer = csv.writer(_Calls(lambda text: write(text[:-2] + "\n")), lineterminator="\r\n")
        self.width = len(header.columns)
        self.names = result_names(results, header.columns)
        self.writer.writerow([*header.columns, *self.names])

        self._texts: list[str] = []
        self._many = csv.writer(_Calls(self._texts.append), lineterminator="\r\n")

    def write(self, cells: list[str], line: int, values: Sequence[object]) -> None:
        padded = cells[: self.width] + [""] * (self.width - len(cells))
        shown = ["" if v is None else str(v) for v in values]
        self.writer.writerow([*padded, *shown, *cells[self.width :]])

    def texts(self, records: Sequence[tuple[list[str], int, Sequence[object]]]) -> list[str]:
        """Many records' texts at once (one writerows call; csv writes None as an empty cell, as ``write`` does)."""
        width = self.width
        try:
            self._many.writerows(
                [*cells, *values]
                if len(cells) == width
                else [*cells[:width], *[""] * (width - len(cells)), *values, *cells[width:]]
                for cells, _, values in records
            )
            return [t[:-2] + "\n" for t in self._texts]  # each record's CRLF as LF (see __init__)
        finally:
            self._texts.clear()


class JsonlRecords:
    """JSONL out: input cells under unique keys, then ``line`` and the results (renamed by the collision rule)."""

    def __init__(self, write: Callable[[str], object], header: Header, results: Sequence[str]) -> None:
        self.out = _Calls(write)
        self.keys = unique_keys(header.columns)
        self.line_key, self.extra_key, *names = result_names(["line", "extra_cells", *results], self.keys)
        self.names = names

    def write(self, cells: list[str], line: int, values: Sequence[object]) -> None:
        self.out.write(self._text(cells, line, values))

    def _text(self, cells: list[str], line: int, values: Sequence[object]) -> str:
        record: dict[str, Any] = dict(zip(self.keys, cells, strict=False))
        for key in self.keys[len(cells) :]:
            record[key] = ""
        record[self.line_key] = line
        record.update(zip(self.names, values, strict=True))
        if len(cells) > len(self.keys):
            record[self.extra_key] = cells[len(self.keys) :]
        return json.dumps(record, ensure_ascii=False) + "\n"

    def texts(self, records: Sequence[tuple[list[str], int, Sequence[object]]]) -> list[str]:
        return [self._text(cells, line, values) for cells, line, values in records]


class _Raw(io.RawIOBase):
    """Unbuffered writes to a file descriptor, calling ``before_write`` first (clears a progress bar);
    counts the bytes that actually reached the descriptor."""

    def __init__(self, fd: int, closefd: bool, before_write: Callable[[], None] | None) -> None:
        self.fd, self.closefd, self.before_write = fd, closefd, before_write
        self.written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self.before_write is not None:
            self.before_write()
        n = os.write(self.fd, data)
        self.written += n
        return n

    def close(self) -> None:
        if not self.closed and self.closefd:
            os.close(self.fd)
        super().close()


class Output:
    """Where results go: UTF-8 records over a file descriptor, errors kept instead of raised at close.

    ``write(text)`` takes one record; ``records_written()`` counts the records whose last byte
    reached the file (not just the buffer), which is what the summary reports after a failure.
    """

    def __init__(
        self,
        fd: int,
        name: str,
        closefd: bool,
        before_write: Callable[[], None] | None = None,
        temp: str | None = None,
        target: str | None = None,
    ) -> None:
        self.name, self.temp, self.target = name, temp, target or name
        """``temp``: the temporary file renamed onto ``target`` (``name`` through symlinks) by ``close``."""
        self.raw = _Raw(fd, closefd, before_write)
        self.buffer = io.BufferedWriter(self.raw, buffer_size=1 << 16)
        self.tty = os.isatty(fd)  # a terminal sees each row as it is written; files and pipes get 64 KB writes
        self.offset = 0
        self._ends: deque[int] = deque()
        self._confirmed = 0

    def write(self, text: str, record: bool = True) -> None:
        data = text.encode("utf-8")  # raises before anything is written if a cell cannot be encoded
        self.buffer.write(data)
        self.offset += len(data)
        if record:
            self._ends.append(self.offset)
            if len(self._ends) > 4096:
                self.records_written()
        if self.tty:
            self.buffer.flush()

    def write_records(self, texts: list[str]) -> None:
        """Many records in one buffered write; encodes all of them before writing any (like ``write``)."""
        joined = "".join(texts)
        data = joined.encode("utf-8")
        self.buffer.write(data)
        lengths = map(len, texts) if len(data) == len(joined) else (len(t.encode("utf-8")) for t in texts)
        offset, ends = self.offset, self._ends
        for n in lengths:
            offset += n
            ends.append(offset)
        self.offset = offset
        if len(ends) > 4096:
            self.records_written()
        if self.tty:
            self.buffer.flush()

    def uncount_last(self) -> None:
        """The last write was not a record (the CSV header)."""
        if self._ends:
            self._ends.pop()

    def records_written(self) -> int:
        while self._ends and self._ends[0] <= self.raw.written:
            self._ends.popleft()
            self._confirmed += 1
        return self._confirmed

    def close(self, commit: bool = True) -> OSError | None:
        """Flush and close (and rename the temporary file into place if ``commit``); the first error."""
        error: OSError | None = None
        try:
            self.buffer.flush()
            if self.temp is not None and commit:
                os.fsync(self.raw.fd)  # the renamed file must hold the data, not just its name
        except OSError as e:
            error = e
        try:
            self.buffer.close()
        except OSError as e:
            error = error or e
        if self.temp is not None and commit and error is None:
            try:
                os.replace(self.temp, self.target)
                self.temp = None
            except OSError as e:
                error = e
        return error


def same_file(a: os.stat_result | None, b: os.stat_result) -> bool:
    """Do two stats name one regular file (same device and inode)?"""
    return a is not None and stat.S_ISREG(b.st_mode) and (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def open_output(path: str, input_stat: os.stat_result | None, before_write: Callable[[], None] | None = None) -> Output:
    """``path`` ('-' is stdout) ready for writing; the input is never truncated by it.

    Raises BulkInputError when it is the input, OSError when it cannot be opened.
    """
    if path == "-":
        if same_file(input_stat, os.fstat(1)):
            raise BulkInputError("stdout is the input file (same device and inode): refusing to overwrite it")
        return Output(1, "stdout", False, before_write)
    st: os.stat_result | None
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    if st is not None and same_file(input_stat, st):
        raise BulkInputError(f"{path} is the input file (same device and inode): refusing to overwrite it")
    if st is None or stat.S_ISREG(st.st_mode):
        temp = _temporary_beside(path, st)
        if temp is not None:
            return Output(temp[0], path, True, before_write, temp=temp[1], target=os.path.realpath(path))
    return _open_in_place(path, input_stat, before_write)


def _temporary_beside(path: str, st: os.stat_result | None) -> tuple[int, str] | None:
    """(fd, name) of a new file next to ``path`` (same file system, so the rename is atomic), with
    the mode the output would have had; None when the directory is not writable."""
    target = os.path.realpath(path)  # through a symlink: replace the file it names, keep the link
    folder, base = os.path.split(target)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{base}.", suffix=".partial", dir=folder or ".")
    except PermissionError:
        return None
    mask = os.umask(0)
    os.umask(mask)
    os.fchmod(fd, stat.S_IMODE(st.st_mode) if st is not None else 0o666 & ~mask)
    return fd, name


def _open_in_place(path: str, input_stat: os.stat_result | None, before_write: Callable[[], None] | None) -> Output:
    """Not a regular file (a device, a FIFO), or no temporary file possible: write to it directly,
    truncating only once it is known not to be the input."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        st = os.fstat(fd)
        if same_file(input_stat, st):
            raise BulkInputError(f"{path} is the input file (same device and inode): refusing to overwrite it")
        if stat.S_ISREG(st.st_mode):
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return Output(fd, path, True, before_write)
