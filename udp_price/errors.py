"""The one error hierarchy: everything udp-price raises on purpose is a QuoteError.

Callers that only want "did udp-price refuse this" catch QuoteError. Errors about values a caller
passed in (a quantity out of range, an item name that cannot go on the wire, a number too big for
its field) are also ValueErrors, so code written against the plain-Python contract keeps working.
"""

from __future__ import annotations


class QuoteError(Exception):
    """Root of every error udp-price raises on purpose."""


class MalformedDatagram(QuoteError):
    """The datagram could not be decoded.

    ``reason`` is a short machine-friendly tag (used as a counter name).
    ``request_id`` is set when the header survived intact (length and CRC32
    correct), so the server may answer with an error status; otherwise it is
    None and the datagram must be dropped silently.
    """

    def __init__(self, reason: str, detail: str = "", request_id: int | None = None) -> None:
        super().__init__(f"malformed datagram ({reason}){': ' + detail if detail else ''}")
        self.reason = reason
        self.request_id = request_id


class UnsupportedVersion(MalformedDatagram):
    """The datagram carries our magic but a protocol version we do not speak."""


class EncodeError(QuoteError, ValueError):
    """A value cannot go on the wire: a number outside its field, a batch of the wrong size."""


class BadItem(EncodeError):
    """An item name that cannot go on the wire: empty, containing NUL, or over 32 bytes of UTF-8."""


class BadQuantity(EncodeError):
    """The quantity breaks the rule: a whole number from 1 to 1,000,000,000."""


class CatalogError(QuoteError):
    """The catalog file is unusable; ``problems`` lists every defect as 'line N: what'."""

    def __init__(self, path: str, problems: list[str]) -> None:
        super().__init__(f"{path}: {len(problems)} problem(s): " + "; ".join(problems))
        self.path = path
        self.problems = problems


class BulkInputError(QuoteError):
    """The orders file itself is unusable (no header, no item/quantity column, unknown encoding)."""


class KeyFileError(QuoteError):
    """A keys file is unusable (unreadable, readable by others, or a bad line); the message is one line
    naming the file and the problem."""
