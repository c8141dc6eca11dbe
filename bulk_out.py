"""Writing the bulk command's results: the output target, column names, CSV and JSONL records.

- The output is opened without truncating it first, and refused if it is the input itself
  (same device and inode, however it is named: a path, a hard link, a symlink, or stdout
  redirected onto the input file), so a run can never eat the file it is reading.
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
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any

from bulk_io import BulkInputError, Header

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
    keys: list[str] = []
    for name in columns:
        key, n = name, 1
        while key in keys or (n > 1 and key in columns):
            n += 1
            key = f"{name}_{n}"
        keys.append(key)
    return keys


class CsvRecords:
    """CSV out: the input header as it is, then the result columns (renamed by the collision rule)."""

    def __init__(self, out: IO[str], header: Header, results: Sequence[str]) -> None:
        import csv

        self.writer = csv.writer(out, lineterminator="\n")
        self.width = len(header.columns)
        self.names = result_names(results, header.columns)
        self.writer.writerow([*header.columns, *self.names])

    def write(self, cells: list[str], line: int, values: Sequence[object]) -> None:
        padded = cells[: self.width] + [""] * (self.width - len(cells))
        shown = ["" if v is None else str(v) for v in values]
        self.writer.writerow([*padded, *shown, *cells[self.width :]])


class JsonlRecords:
    """JSONL out: input cells under unique keys, then ``line`` and the results (renamed by the collision rule)."""

    def __init__(self, out: IO[str], header: Header, results: Sequence[str]) -> None:
        self.out = out
        self.keys = unique_keys(header.columns)
        self.line_key, self.extra_key, *names = result_names(["line", "extra_cells", *results], self.keys)
        self.names = names

    def write(self, cells: list[str], line: int, values: Sequence[object]) -> None:
        record: dict[str, Any] = dict(zip(self.keys, cells, strict=False))
        for key in self.keys[len(cells) :]:
            record[key] = ""
        record[self.line_key] = line
        record.update(zip(self.names, values, strict=True))
        if len(cells) > len(self.keys):
            record[self.extra_key] = cells[len(self.keys) :]
        self.out.write(json.dumps(record, ensure_ascii=False) + "\n")


class _Raw(io.RawIOBase):
    """Unbuffered writes to a file descriptor, calling ``before_write`` first (clears a progress bar)."""

    def __init__(self, fd: int, closefd: bool, before_write: Callable[[], None] | None) -> None:
        self.fd, self.closefd, self.before_write = fd, closefd, before_write

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self.before_write is not None:
            self.before_write()
        return os.write(self.fd, data)

    def close(self) -> None:
        if not self.closed and self.closefd:
            os.close(self.fd)
        super().close()


class Output:
    """Where results go: UTF-8 text over a file descriptor, errors kept instead of raised at close."""

    def __init__(self, fd: int, name: str, closefd: bool, before_write: Callable[[], None] | None = None) -> None:
        self.name = name
        buffered = io.BufferedWriter(_Raw(fd, closefd, before_write), buffer_size=1 << 16)
        # A terminal sees each row as it is written; files and pipes get 64 KB writes.
        self.text = io.TextIOWrapper(buffered, encoding="utf-8", newline="", line_buffering=os.isatty(fd))

    def close(self) -> OSError | None:
        """Flush and close; the first error at flush or close, else None."""
        error: OSError | None = None
        try:
            self.text.flush()
        except OSError as e:
            error = e
        try:
            self.text.close()
        except OSError as e:
            error = error or e
        return error


def same_file(a: os.stat_result | None, b: os.stat_result) -> bool:
    """Do two stats name one regular file (same device and inode)?"""
    return a is not None and stat.S_ISREG(b.st_mode) and (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def open_output(path: str, input_stat: os.stat_result | None, before_write: Callable[[], None] | None = None) -> Output:
    """``path`` ('-' is stdout) opened for writing, truncated only once it is known not to be the input.

    Raises BulkInputError when it is the input, OSError when it cannot be opened.
    """
    if path == "-":
        fd, name, closefd = 1, "stdout", False
    else:
        fd, name, closefd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666), path, True
    try:
        st = os.fstat(fd)
        if same_file(input_stat, st):
            raise BulkInputError(f"{name} is the input file (same device and inode): refusing to overwrite it")
        if closefd and stat.S_ISREG(st.st_mode):
            os.ftruncate(fd, 0)
    except BaseException:
        if closefd:
            os.close(fd)
        raise
    return Output(fd, name, closefd, before_write)
