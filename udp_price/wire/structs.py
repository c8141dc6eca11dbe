"""What every fast message codec shares: the struct formats derived at import time from the
construct definitions in ``wire_format`` (so construct stays the single definition of the layout),
the memoized item fields, and the one packing call that names a field struct refuses.

The codecs themselves are ``udp_price.wire.codec`` (quote and batch messages, any-kind dispatch)
and ``udp_price.wire.lists`` (catalog listing).
"""

from __future__ import annotations

import functools
import re
import struct
from typing import Any

from construct import Array, Bytes, Const, FormatField, Struct

from udp_price.errors import MalformedDatagram
from udp_price.wire.framing import check_unsigned
from udp_price.wire.items import decode_item, encode_item
from udp_price.wire.messages import Status


# These three functions run once, at import, to derive the struct formats from construct's
# layout: mutmut activates a mutant only in a worker forked after the import, so a mutant of them
# never runs and no test can kill it (had one run, _derive's own check and every golden-bytes
# test would fail). Hence "no mutate": they are not counted as survivors.
def _fixed_format(definition: Struct) -> tuple[str, tuple[str, ...]]:  # pragma: no mutate block
    """(struct format, field names) for the fixed-size fields of a construct Struct, up to any Array."""
    fmt, names = ">", []
    for field in definition.subcons:
        sub = field.subcon
        if isinstance(sub, Array):
            break
        if isinstance(sub, Const):
            fmt += f"{len(sub.value)}s"
        elif isinstance(sub, Bytes) and isinstance(sub.length, int):
            fmt += f"{sub.length}s"
        elif isinstance(sub, FormatField) and sub.fmtstr[0] == ">":
            fmt += sub.fmtstr[1:]
        else:
            raise TypeError(f"field {field.name!r} has no fixed struct format")
        names.append(field.name)
    return fmt, tuple(names)


def _array_element(definition: Struct) -> Struct:  # pragma: no mutate block
    arrays = [f.subcon for f in definition.subcons if isinstance(f.subcon, Array)]
    assert len(arrays) == 1, "batch messages end in exactly one Array"
    element: Struct = arrays[0].subcon
    return element


_FIELD_NAMES: dict[str, tuple[str, ...]] = {}


def _derive(definition: Struct, expected: tuple[str, ...]) -> struct.Struct:  # pragma: no mutate block
    fmt, names = _fixed_format(definition)
    # The fast codecs unpack by position: refuse to start if the definition moved on.
    if names != expected:
        raise RuntimeError(f"fast codec out of date: {names} != {expected}")
    _FIELD_NAMES[fmt] = names
    return struct.Struct(fmt)


_HDR = ("magic", "version", "kind", "request_id")
_STATUS = {s.value: s for s in Status}


@functools.lru_cache(maxsize=4096)
def _item_field(name: str) -> bytes:
    """encode_item, remembered: a catalog's few names are encoded over and over."""
    return encode_item(name)


@functools.lru_cache(maxsize=4096)
def _item_or_reason(raw: bytes) -> str | tuple[str, str]:
    """The item in a 32-byte field, or (reason, detail) for MalformedDatagram; remembered."""
    try:
        return decode_item(raw, 0)
    except MalformedDatagram as e:
        return e.reason, str(e.__cause__ or "")


def _item(raw: bytes, request_id: int) -> str:
    found = _item_or_reason(raw)
    if isinstance(found, tuple):
        raise MalformedDatagram(found[0], found[1], request_id=request_id)
    return found


def _pack(fmt: struct.Struct, *values: Any) -> bytes:
    """fmt.pack; when struct refuses a value, the one range check (check_unsigned) names the field
    (run only on this error path, so the common path stays fast)."""
    try:
        return fmt.pack(*values)
    except struct.error:
        names = _FIELD_NAMES[fmt.format]
        codes = re.findall(r"\d*[a-zA-Z]", fmt.format[1:])
        for name, code, value in zip(names, codes, values, strict=True):
            if code in ("B", "H", "I", "L", "Q"):  # the unsigned integer codes construct uses
                check_unsigned(value, struct.calcsize(">" + code) * 8, name)
        raise
