"""Authenticated exchanges: shared keys, the signed trailer (flag 0x80), the replay window, and the
server's and client's gates. Pure: no sockets, no clock (wall time is passed in, in seconds).

The precedents: DNS TSIG (RFC 8945: a shared key per client, an HMAC over the whole message, a
signed time with a fudge window), DNS Cookies (RFC 7873) and CoAP's OSCORE (RFC 8613)."""

from udp_price.auth.gate import ClientAuth, ServerAuth
from udp_price.auth.keys import Key, new_key_line, parse_key_line, parse_keys, read_client_key, read_keys_file
from udp_price.auth.replay import ReplayWindow
from udp_price.auth.trailer import AuthFailure, is_signed, open_signed, sign, verify

__all__ = [
    "AuthFailure",
    "ClientAuth",
    "Key",
    "ReplayWindow",
    "ServerAuth",
    "is_signed",
    "new_key_line",
    "open_signed",
    "parse_key_line",
    "parse_keys",
    "read_client_key",
    "read_keys_file",
    "sign",
    "verify",
]
