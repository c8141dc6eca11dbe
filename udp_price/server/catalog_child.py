"""Parse and index a large catalog in a child process; the server receives only the compact arrays.

Why a process and not the reload thread: parsing a million-item catalog in the server's own
process holds the GIL in single C calls for up to ~0.4 s (sorting a million names, splitting 19 MB
of text), and every such call stalls the serving thread: the longest gap between answers during a
reload was 226 ms. Its temporaries (~3x the file: line strings, encoded names, lists) also stay in
the server's heap afterwards (284 MB RSS after a reload at 1M items against 104 MB after start-up).
In a child both costs stay in the child: the server's reload thread only writes the file's bytes
to a pipe and reads back the five arrays of the CatalogIndex (40 bytes an item) and the catalog
version, blocking reads and writes that release the GIL, and builds the arrays with a few memcpys.

Protocol on the child's stdout: one JSON line, then the blobs it announces.

- ``{"items": N, "version": V}`` then 5 x 8N bytes: words 0..3 and prices, native byte order
  (parent and child run on the same machine);
- ``{"problems": [...]}``: the catalog is bad (CatalogError), nothing follows.

The child is ``sys.executable -m udp_price.server.catalog_child PATH`` with the file's bytes on
stdin, so it shares nothing with the server but the code. Any failure to run it (no interpreter,
a crash, a garbled answer, too slow) returns None and the caller parses in-process, as before.
"""

from __future__ import annotations

import json
import subprocess
import sys
from array import array

from udp_price.catalog import Catalog, parse_catalog_bytes
from udp_price.catalog_index import CatalogIndex
from udp_price.errors import CatalogError

CHILD_MIN_BYTES = 1 << 20
"""Files at least this big (~50,000 items) are parsed in a child; smaller ones parse in-process in
a few ms, less than starting an interpreter (~0.1 s)."""
CHILD_TIMEOUT_S = 300.0
"""A child that has not answered by then is killed and the parse is done in-process."""
_ARRAYS = 5


def parse_in_child(raw: bytes, path: str, timeout_s: float = CHILD_TIMEOUT_S) -> Catalog | None:
    """The catalog in ``raw`` parsed and indexed by a child process; raises CatalogError for a bad
    catalog, exactly as parse_catalog_bytes would. None when the child could not do it."""
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "udp_price.server.catalog_child", path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
    except OSError:
        return None
    try:
        out, _ = proc.communicate(raw, timeout=timeout_s)  # pipes read and written in chunks, GIL released
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None
    if proc.returncode != 0:
        return None
    return decode_answer(out, path)


def decode_answer(out: bytes, path: str) -> Catalog | None:
    """The catalog a child's answer describes (raises CatalogError for its problems), or None if garbled."""
    header_end = out.find(b"\n")
    try:
        header = json.loads(out[:header_end]) if header_end >= 0 else None
    except ValueError:
        return None
    if not isinstance(header, dict):
        return None
    if "problems" in header:
        raise CatalogError(path, [str(p) for p in header["problems"]])
    items, version = header.get("items"), header.get("version")
    if not isinstance(items, int) or not isinstance(version, int) or items < 1:
        return None
    body = memoryview(out)[header_end + 1 :]
    size = 8 * items
    if len(body) != _ARRAYS * size:
        return None
    arrays = []
    for k in range(_ARRAYS):
        part = array("Q")
        part.frombytes(body[k * size : (k + 1) * size])
        arrays.append(part)
    index = CatalogIndex((arrays[0], arrays[1], arrays[2], arrays[3]), arrays[4])
    return Catalog.from_index(index, version)


def encode_answer(raw: bytes, path: str) -> list[bytes]:
    """What the child writes for the catalog bytes ``raw``: the header line and the arrays."""
    try:
        catalog = parse_catalog_bytes(raw, path)
    except CatalogError as e:
        return [json.dumps({"problems": e.problems}).encode() + b"\n"]
    index = catalog.index
    header = json.dumps({"items": len(index), "version": catalog.version}).encode() + b"\n"
    return [header, *(a.tobytes() for a in index.arrays())]


def main(argv: list[str]) -> int:
    path = argv[0] if argv else "<catalog>"
    raw = sys.stdin.buffer.read()
    for part in encode_answer(raw, path):
        sys.stdout.buffer.write(part)
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
