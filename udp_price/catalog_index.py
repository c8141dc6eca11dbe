"""One compact, sorted index of a catalog, shared by quoting, the fast path and the listing.

A catalog of a million items held as Python objects (a dict of str -> int, a dict of wire-encoded
bytes -> int for the fast path, a tuple of (name, price) tuples for the listing) costs about 350
bytes an item and takes a second or more to free. Here an item costs 40 bytes in four flat arrays
and nothing else:

- ``words[0..3]``: the item's 32-byte wire field (NUL-padded UTF-8, see udp_price.wire.items) as
  four big-endian u64 words, one array per word, in the item's sort order;
- ``prices``: the unit price in minor units, u64, in the same order.

UTF-8 byte order is code point order, and NUL padding sorts a name before its extensions ("ab"
before "abc"), so sorting the wire fields sorts the names exactly as ``sorted()`` sorts str.

Lookups use only C-level binary searches (``bisect`` over ``array``): the first word narrows the
range to the items sharing their first 8 bytes, the next word narrows within that range (sorted
there too), and so on. A quote costs about a microsecond and a prefix search (the range of names
starting with some bytes) two such searches. Building is a sort plus a few array slices; freeing is
four deallocations, so dropping an old catalog after a reload never holds the GIL for long.
"""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Mapping

from wire_format import ITEM_SIZE

_WORDS = struct.Struct(">4Q")
_WORD_COUNT = ITEM_SIZE // 8
assert _WORDS.size == ITEM_SIZE and _WORD_COUNT == 4, "the index splits the 32-byte item field in four u64 words"
_LITTLE_ENDIAN = struct.pack("=H", 1) != struct.pack(">H", 1)
HOT_ITEMS = 4096
"""Wire fields whose price the index remembers in a dict (about 600 KB at most)."""
BYTES_PER_ITEM = ITEM_SIZE + 8
"""Memory an item costs in the index: its wire field and its u64 price."""


class CatalogIndex:
    """Sorted wire fields and prices; position ``i`` is the i-th item by name."""

    __slots__ = ("_hot", "_words", "prices")

    def __init__(self, words: tuple[array[int], array[int], array[int], array[int]], prices: array[int]) -> None:
        self._words = words
        self.prices = prices
        self._hot: dict[bytes, int] = {}

    @classmethod
    def from_sorted_fields(cls, fields: bytes, prices: Iterable[int]) -> CatalogIndex:
        """``fields``: the items' wire fields concatenated, sorted, no duplicates; ``prices`` in the same order."""
        flat = array("Q")
        flat.frombytes(fields)
        if flat.itemsize != 8:
            raise RuntimeError("this platform has no 8-byte 'Q' array type")
        if _LITTLE_ENDIAN:
            flat.byteswap()  # big-endian words compare like the bytes they hold
        words = (flat[0::4], flat[1::4], flat[2::4], flat[3::4])
        return cls(words, array("Q", prices))

    @classmethod
    def from_items(cls, items: Iterable[tuple[bytes, int]]) -> CatalogIndex:
        """From (wire field, price) pairs in any order, no duplicate fields."""
        pairs = sorted(items)
        return cls.from_sorted_fields(b"".join(f for f, _ in pairs), [p for _, p in pairs])

    def __len__(self) -> int:
        return len(self.prices)

    def field(self, position: int) -> bytes:
        """The wire field of the item at ``position``."""
        w0, w1, w2, w3 = self._words
        return _WORDS.pack(w0[position], w1[position], w2[position], w3[position])

    def find(self, field: bytes) -> int:
        """Position of the item whose wire field is ``field`` (32 bytes), or -1."""
        key = _WORDS.unpack(field)
        lo, hi = 0, len(self.prices)
        for level, words in enumerate(self._words):
            word = key[level]
            lo = bisect_left(words, word, lo, hi)
            if lo == hi or words[lo] != word:
                return -1
            if lo + 1 == hi or words[lo + 1] != word:  # one item left: compare its other words
                rest = self._words[level + 1 :]
                return lo if all(w[lo] == k for w, k in zip(rest, key[level + 1 :], strict=True)) else -1
            hi = bisect_right(words, word, lo + 1, hi)
        return lo

    def price_of_field(self, field: bytes) -> int | None:
        """Unit price of the item whose wire field is ``field``, or None.

        Recently asked items are remembered (at most HOT_ITEMS, then forgotten all at once): the
        fast path then pays one dict look-up instead of the binary searches."""
        price = self._hot.get(field)
        if price is not None:
            return price
        position = self.find(field)
        if position < 0:
            return None
        if len(self._hot) >= HOT_ITEMS:
            self._hot.clear()
        price = self._hot[field] = self.prices[position]
        return price

    def lower_bound(self, field: bytes) -> int:
        """Position of the first item whose wire field is not below ``field`` (32 bytes)."""
        return self._narrow(_WORDS.unpack(field), 0, len(self.prices), exact=False)

    def prefix_range(self, prefix: bytes) -> tuple[int, int]:
        """[start, stop) positions of the items whose name starts with the UTF-8 bytes ``prefix``.

        Names are valid UTF-8 and so never contain the byte 0xFF: every name with a shorter prefix
        sorts before the prefix padded with 0xFF, and none after. A prefix of the full field width
        (32 bytes) has nothing to pad: the only name starting with it is that name itself, so the
        range is that one item if it exists. A longer prefix matches nothing."""
        if not prefix:
            return 0, len(self.prices)
        if len(prefix) > ITEM_SIZE:
            return 0, 0
        start = self.lower_bound(prefix.ljust(ITEM_SIZE, b"\0"))
        if len(prefix) == ITEM_SIZE:
            found = start < len(self.prices) and self.field(start) == prefix
            return start, start + 1 if found else start
        stop = self.lower_bound(prefix.ljust(ITEM_SIZE, b"\xff"))
        return start, stop

    def _narrow(self, key: tuple[int, ...], lo: int, hi: int, exact: bool) -> int:
        # Word by word: within the range of items equal so far, the next word is sorted too.
        for words, word in zip(self._words, key, strict=True):
            left = bisect_left(words, word, lo, hi)
            right = bisect_right(words, word, left, hi)
            if left == right:
                return -1 if exact else left
            lo, hi = left, right
        return lo

    def fields_blob(self, start: int, stop: int) -> bytes:
        """The wire fields of the items at positions start..stop-1, concatenated (C-level copies)."""
        flat = array("Q", bytes(8 * _WORD_COUNT * max(0, stop - start)))
        for k, words in enumerate(self._words):
            flat[k::_WORD_COUNT] = words[start:stop]
        if _LITTLE_ENDIAN:
            flat.byteswap()
        return flat.tobytes()

    def entries(self, start: int, stop: int) -> list[tuple[bytes, int]]:
        """(wire field, price) of the items at positions start..stop-1."""
        blob = self.fields_blob(start, stop)
        fields = [blob[i : i + ITEM_SIZE] for i in range(0, len(blob), ITEM_SIZE)]
        return list(zip(fields, self.prices[start:stop], strict=True))

    def arrays(self) -> tuple[array[int], ...]:
        """The four word arrays and the prices: all an index holds (CatalogIndex(words, prices) rebuilds it)."""
        return (*self._words, self.prices)

    def memory_bytes(self) -> int:
        """Bytes held by the arrays (what an item costs: BYTES_PER_ITEM)."""
        return sum(w.buffer_info()[1] * w.itemsize for w in (*self._words, self.prices))


class IndexedPrices(Mapping[str, int]):
    """A read-only ``{name: price}`` view of a CatalogIndex (what Catalog.prices is)."""

    __slots__ = ("_index",)

    def __init__(self, index: CatalogIndex) -> None:
        self._index = index

    def __getitem__(self, name: str) -> int:
        if not isinstance(name, str):
            raise KeyError(name)
        data = name.encode("utf-8", "surrogatepass")
        if len(data) > ITEM_SIZE or not data or b"\0" in data:
            raise KeyError(name)
        position = self._index.find(data.ljust(ITEM_SIZE, b"\0"))
        if position < 0:
            raise KeyError(name)
        return self._index.prices[position]

    def __len__(self) -> int:
        return len(self._index)

    def __iter__(self) -> Iterator[str]:
        for position in range(len(self._index)):
            yield field_name(self._index.field(position))

    def __repr__(self) -> str:
        return f"IndexedPrices({len(self)} items)"


def field_name(field: bytes) -> str:
    """The name in a wire field the index holds (valid, NUL-padded UTF-8)."""
    return field.rstrip(b"\0").decode("utf-8")
