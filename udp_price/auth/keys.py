"""Keys files: one ``key_id base64-secret`` per line, checked like ssh checks its private keys.

A server's file may hold several keys (two during a rotation: the old one and the new one are both
valid until every client has moved); a client's file holds exactly one. ``#`` starts a comment.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from dataclasses import dataclass, field

from udp_price.errors import KeyFileError

MIN_SECRET_BYTES = 16
"""128 bits: the least the issue (and RFC 8945 section 6, for HMAC-SHA256 TSIG keys) accepts."""
MAX_SECRET_BYTES = 64
"""HMAC-SHA256 hashes a longer key down to 32 bytes anyway (RFC 2104 section 3); 64 is its block size."""
MAX_KEY_ID = 2**32 - 1
MAX_KEYS_FILE_BYTES = 1 << 20
NEW_KEY_BYTES = 32


@dataclass(frozen=True, slots=True)
class Key:
    """One shared secret and the id that names it on the wire (u32)."""

    key_id: int
    secret: bytes
    pads: tuple[hashlib._Hash, hashlib._Hash] = field(init=False, repr=False, compare=False)
    """SHA-256 states after HMAC's inner and outer padded key blocks (RFC 2104 section 2), computed
    once: each tag then costs two copies and two short updates instead of the whole key schedule."""

    def __post_init__(self) -> None:
        _check_key(self.key_id, self.secret)
        block = self.secret.ljust(64, b"\0")
        inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
        object.__setattr__(self, "pads", (inner, outer))

    def __repr__(self) -> str:  # never print a secret into a log or a traceback
        return f"Key(key_id={self.key_id}, secret=<{len(self.secret)} bytes>)"


def _check_key(key_id: object, secret: object) -> None:
    """The rules of a keys file, for a Key made in Python too: refused at once with a clear
    message rather than by a struct error at the first send or a silent weak key."""
    if not isinstance(key_id, int) or isinstance(key_id, bool):
        raise TypeError(f"Key: the key id must be an int, not {type(key_id).__name__}")
    if not 0 <= key_id <= MAX_KEY_ID:
        raise ValueError(f"Key: key id {key_id} is not a whole number from 0 to {MAX_KEY_ID}")
    if not isinstance(secret, bytes):
        raise TypeError(f"Key: the secret must be bytes (decoded from base64), not {type(secret).__name__}")
    if not MIN_SECRET_BYTES <= len(secret) <= MAX_SECRET_BYTES:
        raise ValueError(
            f"Key: the secret is {len(secret)} bytes; it must be {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} "
            f"(at least 128 bits)"
        )


def parse_key_line(line: str, where: str) -> Key:
    """One ``key_id base64-secret`` line; KeyFileError naming ``where`` (file and line) if it is bad."""
    fields = line.split()
    if len(fields) != 2:
        raise KeyFileError(f"{where}: expected 'key_id base64-secret', got {len(fields)} field(s)")
    key_text, secret_text = fields
    if not (key_text.isascii() and key_text.isdigit() and len(key_text) <= 10) or int(key_text) > MAX_KEY_ID:
        raise KeyFileError(f"{where}: key id {key_text[:16]!r} is not a whole number from 0 to {MAX_KEY_ID}")
    try:
        secret = base64.b64decode(secret_text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise KeyFileError(f"{where}: the secret is not valid base64 ({e})") from e
    if not MIN_SECRET_BYTES <= len(secret) <= MAX_SECRET_BYTES:
        raise KeyFileError(
            f"{where}: the secret is {len(secret)} bytes; it must be {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} "
            f"(at least 128 bits)"
        )
    return Key(int(key_text), secret)


def parse_keys(text: str, path: str) -> dict[int, Key]:
    """Every key in a keys file's text, by key id; KeyFileError on the first bad or duplicate line."""
    keys: dict[int, Key] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key = parse_key_line(line, f"{path} line {number}")
        if key.key_id in keys:
            raise KeyFileError(f"{path} line {number}: key id {key.key_id} is already defined above")
        keys[key.key_id] = key
    if not keys:
        raise KeyFileError(f"{path}: no key in the file (expected lines of 'key_id base64-secret')")
    return keys


def mode_problem(mode: int, path: str) -> str | None:
    """Why a file with this st_mode must not hold secrets, or None. Like ssh's "UNPROTECTED PRIVATE
    KEY FILE": group or others may neither read nor write it, and it must be a regular file."""
    if not stat.S_ISREG(mode):
        return f"{path} is not a regular file"
    if mode & 0o077:
        return (
            f"permissions {stat.S_IMODE(mode):04o} for {path} are too open: group and others must have no "
            f"access to a keys file (chmod 600 {path})"
        )
    return None


def _read_protected(path: str) -> str:
    """The text of a keys file, refused if anyone but its owner may read or change it. A symlink is
    followed (a Kubernetes secret volume is made of them); the mode checked is that of the file
    actually opened (fstat after open, as ssh does), so a swap between check and read cannot fool it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise KeyFileError(f"cannot read keys file {path}: {e.strerror or e}") from e
    try:
        problem = mode_problem(os.fstat(fd).st_mode, path)  # the mode of the very file we read
        if problem:
            raise KeyFileError(problem)
        raw = os.read(fd, MAX_KEYS_FILE_BYTES + 1)
    except OSError as e:
        raise KeyFileError(f"cannot read keys file {path}: {e.strerror or e}") from e
    finally:
        os.close(fd)
    if len(raw) > MAX_KEYS_FILE_BYTES:
        raise KeyFileError(f"{path}: a keys file is at most {MAX_KEYS_FILE_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise KeyFileError(f"{path}: not UTF-8 text (byte {e.start})") from e


def read_keys_file(path: str) -> dict[int, Key]:
    """A server's keys: every line of the file, by key id (KeyFileError with a one-line message)."""
    return parse_keys(_read_protected(path), path)


def read_client_key(path: str) -> Key:
    """A client's key: the file must hold exactly one ``key_id base64-secret`` line."""
    keys = parse_keys(_read_protected(path), path)
    if len(keys) != 1:
        raise KeyFileError(f"{path}: a client key file holds exactly one key, found {len(keys)}")
    return next(iter(keys.values()))


def new_key_line(key_id: int, random_bytes: bytes) -> str:
    """The keys-file line for a new key made of ``random_bytes`` (the caller draws them from ``secrets``)."""
    if not 0 <= key_id <= MAX_KEY_ID:
        raise ValueError(f"key id {key_id} is not a whole number from 0 to {MAX_KEY_ID}")
    return f"{key_id} {base64.b64encode(random_bytes).decode('ascii')}"
