"""The one address type, parser and formatter used by every command and module.

An address is a (host, port) pair. IPv6 sockets report (host, port, flowinfo, scope_id); such a
tuple is passed along as it came (it is what sendto() needs) and only its host and port are read.
On a command line an address is written HOST:PORT, with IPv6 hosts in brackets as in URLs
(RFC 3986 section 3.2.2): 127.0.0.1:9999, [::1]:9999, localhost:9999.
"""

from __future__ import annotations

Address = tuple[str, int]

MAX_PORT = 65535


class BadAddress(ValueError):
    """The text is not HOST:PORT; the message says what the expected form is."""


def parse_address(text: str, *, allow_port_zero: bool = False) -> Address:
    """'127.0.0.1:9999', '[::1]:9999' or 'localhost:9999' -> (host, port).

    Port 0 means "any free port": it is accepted only where the caller listens (``allow_port_zero``),
    never for a peer to send to, where it could only be a mistake.
    """
    host, sep, port_text = text.rpartition(":")
    # The length is checked before int(), so a 5,000-digit port costs nothing.
    ok = sep and host and port_text.isascii() and port_text.isdigit() and len(port_text) <= 5
    lowest = 0 if allow_port_zero else 1
    if not ok or not lowest <= int(port_text) <= MAX_PORT:
        example = "127.0.0.1:0 or [::1]:9999" if allow_port_zero else "127.0.0.1:9999 or [::1]:9999"
        raise BadAddress(f"{text[:64]!r} is not HOST:PORT (e.g. {example})")
    return host.strip("[]"), int(port_text)


def format_address(addr: Address) -> str:
    """HOST:PORT, with an IPv6 host in brackets: the form parse_address reads back."""
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
