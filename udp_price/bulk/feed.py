"""Getting the bulk command's input off the event loop: robust line reads and a reader thread.

- ``ChunkLines`` splits bytes into physical lines ending in LF, CRLF or a lone CR (old Mac
  exports), reading through any ``read(n)`` function. Only an empty read is the end of the input:
  a short read is just a short read.
- ``fd_read`` reads a file descriptor that may have been handed to us non-blocking (O_NONBLOCK
  inherited from a parent): ``BlockingIOError`` means "wait until readable", never "end of file".
  The flag itself is left alone because the open file description is shared with other processes.
- ``RowFeed`` runs the row iterator in a daemon thread so a stalled input (a pipe whose writer
  pauses, ``tail -f``) never blocks the event loop: signals and replies are handled while a read
  waits. The thread stops reading while the rows read but not yet written reach a bound in rows
  OR in input bytes, so memory is bounded whatever the rows' width.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar

CHUNK = 1 << 16


def fd_read(fd: int) -> Callable[[int], bytes]:
    """``os.read`` on ``fd`` that waits (select) instead of failing when the fd is non-blocking."""

    def read(n: int) -> bytes:
        while True:
            try:
                return os.read(fd, n)
            except BlockingIOError:
                select.select([fd], [], [])

    return read


class ChunkLines:
    """``readline(limit)`` over a ``read(n)`` function; lines end in LF, CRLF or CR (kept)."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self._buf = bytearray()
        self._pos = 0
        self._eof = False

    def _fill(self) -> bool:
        """Append one read to the buffer; False at the end of the input (an empty read)."""
        if self._eof:
            return False
        data = self._read(CHUNK)
        if not data:
            self._eof = True
            return False
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data
        return True

    def _take(self, end: int) -> bytes:
        line = bytes(self._buf[self._pos : end])
        self._pos = end
        return line

    def take_block(self, limit: int) -> bytes:
        """Whole lines already buffered (the bytes up to the last LF), at most ``limit`` bytes; when
        none is buffered, one read first. b'' when there is still no whole line (the caller then
        reads line by line: a long line, a lone CR at the end, or the end of the input)."""
        end = self._buf.rfind(b"\n", self._pos, self._pos + limit)
        if end < 0:
            if not self._fill():
                return b""
            end = self._buf.rfind(b"\n", self._pos, self._pos + limit)
            if end < 0:
                return b""
        return self._take(end + 1)

    def readline(self, limit: int) -> bytes:
        """The next line with its terminator, or at most ``limit`` bytes of it; b'' at the end."""
        scan = 0  # bytes after _pos already searched (relative: _fill moves the buffer)
        while True:
            start = self._pos
            stop = min(len(self._buf), start + limit)
            lf = self._buf.find(b"\n", start + scan, stop)
            cr = self._buf.find(b"\r", start + scan, lf if lf >= 0 else stop)
            if cr >= 0:
                if cr + 1 < len(self._buf):
                    # CRLF is one terminator; a CR followed by anything else is one on its own
                    crlf = self._buf[cr + 1] == 0x0A and cr + 2 - start <= limit
                    return self._take(cr + 2 if crlf else cr + 1)
                scan = cr - start  # a CR last in the buffer: the next byte decides CR or CRLF
                if not self._fill():
                    return self._take(len(self._buf))
                continue
            if lf >= 0:
                return self._take(lf + 1)
            if len(self._buf) - start >= limit:
                return self._take(start + limit)
            scan = len(self._buf) - start
            if not self._fill():
                return self._take(len(self._buf))


class Sized(Protocol):
    size: int


T = TypeVar("T", bound=Sized)


class RowFeed(Generic[T]):
    """Chunks (lists) of items of ``rows`` read by a thread, handed to the event loop, bounded in
    count and bytes.

    ``release(n, nbytes)`` is called as items are written; the thread waits while ``max_rows``
    items or ``max_bytes`` bytes are out (it always lets one chunk through, however big).
    """

    def __init__(self, rows: Iterator[list[T]], max_rows: int, max_bytes: int) -> None:
        self._rows, self.max_rows, self.max_bytes = rows, max_rows, max_bytes
        self._queue: deque[list[T]] = deque()
        self._cond = threading.Condition()
        self._out_rows = 0
        self._out_bytes = 0
        self._closed = False
        self.done = False
        """The thread has finished: the iterator ended (or raised, see ``error``)."""
        self.error: BaseException | None = None
        self.blocked = False
        """The thread waits for rows to be written (the bound is reached)."""
        self._waiting = False
        self._ready = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        threading.Thread(target=self._run, name="bulk-reader", daemon=True).start()

    def _run(self) -> None:
        try:
            for chunk in self._rows:
                if not chunk:
                    continue
                with self._cond:
                    while not self._closed and self._out_rows and self._full():
                        self.blocked = True
                        self._wake()  # a consumer holding a partial batch must send it now
                        self._cond.wait()
                    self.blocked = False
                    if self._closed:
                        return
                    self._out_rows += len(chunk)
                    self._out_bytes += sum(row.size for row in chunk)
                self._queue.append(chunk)
                self._wake()
                # Let the event loop have the GIL between chunks: otherwise replies wait up to the
                # interpreter's switch interval (5 ms) while this thread parses the next block.
                time.sleep(0)
        except BaseException as e:  # reported by the caller: an unexpected reader failure ends the input
            self.error = e
        finally:
            self.done = True
            self._wake()

    def _full(self) -> bool:
        return self._out_rows >= self.max_rows or self._out_bytes >= self.max_bytes

    def _wake(self) -> None:
        if self._waiting and self._loop is not None:
            self._waiting = False
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
                self._loop.call_soon_threadsafe(self._ready.set)

    def release(self, rows: int, nbytes: int) -> None:
        with self._cond:
            self._out_rows -= rows
            self._out_bytes -= nbytes
            if self.blocked:  # only a thread waiting for room needs waking (a notify per run cost ~6%)
                self._cond.notify()

    def close(self) -> None:
        """Stop the thread at its next row (it may stay blocked in a read; it is a daemon)."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    def get_nowait(self) -> list[T] | None:
        return self._queue.popleft() if self._queue else None

    async def get(self, cancel: asyncio.Event, patience: float | None = None) -> list[T] | bool | None:
        """The next chunk; None at the end of the input or once ``cancel`` is set; False when
        ``patience`` seconds passed with nothing to read, or the reader waits for the bound."""
        while True:
            if self._queue:
                return self._queue.popleft()
            if self.done or cancel.is_set():
                return self._queue.popleft() if self._queue else None
            if patience is not None and self.blocked:
                return False
            self._ready.clear()
            self._waiting = True
            if self._queue or self.done:
                self._waiting = False
                continue
            waiters = {asyncio.ensure_future(cancel.wait()), asyncio.ensure_future(self._ready.wait())}
            try:
                done, _ = await asyncio.wait(waiters, timeout=patience, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()
            if not done and not self._queue:
                return False
