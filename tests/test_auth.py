"""Authentication without sockets: the signed trailer, keys files, the replay window and the
server's gate, on the pure core with time passed in (docs/protocol.md "Authentication")."""

from __future__ import annotations

import hmac
import os
import re
from pathlib import Path

import pytest
from helpers import CATALOG

from udp_price.auth import (
    ClientAuth,
    Key,
    ReplayWindow,
    ServerAuth,
    open_signed,
    parse_keys,
    read_client_key,
    read_keys_file,
    sign,
)
from udp_price.auth.trailer import AuthFailure
from udp_price.catalog import load_catalog
from udp_price.errors import KeyFileError
from udp_price.server.core import QuoteServer
from udp_price.server.guards import ReplyCache
from udp_price.wire import (
    BatchRequest,
    ListRequest,
    QuoteReply,
    QuoteRequest,
    Status,
    decode_any_reply,
    encode_batch_request,
    encode_list_request,
    encode_reply,
    encode_request,
    seal,
)
from wire_format import AUTH_TRAILER_DEF, AUTH_TRAILER_SIZE, CRC_SIZE

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
AUTH_VECTOR = re.compile(r"<!-- auth-vector: ([a-z-]+) -->\n```\n(.*?)\n```", re.S)
DOC_KEY = Key(7, bytes(range(32)))
KEY = Key(1, b"k" * 32)
OTHER = Key(2, b"o" * 32)
WALL = 1_800_000_000.0  # Unix seconds of the scripted clock; the server's monotonic now is 0 + offset
ADDR = ("127.0.0.1", 40000)


def keyed_server(*keys: Key, anonymous: bool = False, cache: bool = True) -> QuoteServer:
    auth = ServerAuth({k.key_id: k for k in keys}, allow_anonymous=anonymous, wall_offset_s=WALL)
    return QuoteServer(load_catalog(CATALOG), cache=ReplyCache() if cache else None, auth=auth)


def quote(rid: int = 0x1234, item: str = "apple", qty: int = 3, transmission: int = 1) -> bytes:
    return encode_request(QuoteRequest(rid, item, qty, transmission))


def signed(data: bytes, key: Key = KEY, at_s: float = WALL) -> bytes:
    return sign(data, key, int(at_s * 1000))


# ------------------------------------------------------------------ the bytes


def doc_vectors() -> dict[str, bytes]:
    return {n: bytes.fromhex(b.replace("\n", " ")) for n, b in AUTH_VECTOR.findall(DOC.read_text("utf-8"))}


def test_documented_vectors_are_what_sign_produces_and_open_accepts() -> None:
    request = quote(0x0123456789ABCDEF, "café crème", 2)
    reply = encode_reply(
        QuoteReply(0x0123456789ABCDEF, Status.OK, "café crème", 2, 380, 760, 0x11223344, transmission=1)
    )
    vectors = doc_vectors()
    assert sorted(vectors) == ["quote-reply", "quote-request"]
    assert sign(request, DOC_KEY, 1_700_000_000_000) == vectors["quote-request"]
    assert sign(reply, DOC_KEY, 1_700_000_000_250) == vectors["quote-reply"]
    for name, plain in (("quote-request", request), ("quote-reply", reply)):
        opened = open_signed(vectors[name], {7: DOC_KEY})
        assert (opened.inner, opened.key_id) == (plain, 7)


def test_trailer_layout_is_the_construct_definition() -> None:
    data = signed(quote())
    trailer = data[-CRC_SIZE - AUTH_TRAILER_SIZE : -CRC_SIZE]
    parsed = AUTH_TRAILER_DEF.parse(trailer)
    assert (parsed.key_id, parsed.timestamp_ms) == (KEY.key_id, int(WALL * 1000))
    assert AUTH_TRAILER_DEF.build(parsed) == trailer and AUTH_TRAILER_DEF.sizeof() == AUTH_TRAILER_SIZE
    assert data[3] == 0x81 and len(data) == len(quote()) + AUTH_TRAILER_SIZE
    assert seal(data[:-CRC_SIZE]) == data, "the seal rule holds: the CRC32 covers the trailer"


@pytest.mark.parametrize("position", [0, 3, 5, 20, 75, 80, 90, 99])
def test_any_changed_byte_fails(position: int) -> None:
    data = bytearray(signed(quote()))
    data[position] ^= 0x01
    with pytest.raises(AuthFailure):
        open_signed(seal(bytes(data[:-CRC_SIZE])), {KEY.key_id: KEY})  # CRC fixed up: only the tag can tell


def test_wrong_secret_under_the_right_id_is_a_bad_tag() -> None:
    with pytest.raises(AuthFailure, match="bad_tag"):
        open_signed(signed(quote(), Key(KEY.key_id, b"x" * 32)), {KEY.key_id: KEY})
    with pytest.raises(AuthFailure, match="unknown_key"):
        open_signed(signed(quote(), OTHER), {KEY.key_id: KEY})


# ------------------------------------------------------------------ keys files


def test_keys_file_lines_and_their_errors() -> None:
    keys = parse_keys(f"# rotation\n1 {'a' * 24}\n\n2 {'b' * 24}  # new\n", "k.txt")
    assert sorted(keys) == [1, 2] and len(keys[1].secret) == 18
    assert "secret=<18 bytes>" in repr(keys[1]), "a secret never shows in a repr"
    for text, message in [
        ("1 " + "a" * 20 + "\n", "15 bytes; it must be 16 to 64"),
        ("x " + "a" * 24, "is not a whole number"),
        ("1 not*base64", "not valid base64"),
        ("1", "expected 'key_id base64-secret'"),
        (f"1 {'a' * 24}\n1 {'b' * 24}", "line 2: key id 1 is already defined"),
        ("# nothing\n", "no key in the file"),
    ]:
        with pytest.raises(KeyFileError, match=re.escape(message)):
            parse_keys(text, "k.txt")


def test_keys_file_readable_by_others_is_refused_like_ssh(tmp_path: Path) -> None:
    path = tmp_path / "keys.txt"
    path.write_text(f"1 {'a' * 24}\n")
    path.chmod(0o640)
    with pytest.raises(KeyFileError, match=r"permissions 0640 .* too open.*chmod 600"):
        read_keys_file(str(path))
    path.chmod(0o600)
    assert list(read_keys_file(str(path))) == [1]


def test_a_symlinked_keys_file_is_followed_and_its_target_mode_checked(tmp_path: Path) -> None:
    """Kubernetes mounts secrets as symlinks (key -> ..data/key): they are read, and the mode
    checked is the opened file's (fstat after open), never the link's (always 0777)."""
    path = tmp_path / "keys.txt"
    path.write_text(f"1 {'a' * 24}\n")
    path.chmod(0o600)
    link = tmp_path / "link"
    os.symlink(path, link)
    assert list(read_keys_file(str(link))) == [1]
    assert read_client_key(str(link)).key_id == 1
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match=r"permissions 0644 for .*link are too open"):
        read_keys_file(str(link))
    os.symlink(tmp_path, tmp_path / "dirlink")
    with pytest.raises(KeyFileError, match="is not a regular file"):
        read_keys_file(str(tmp_path / "dirlink"))


# ------------------------------------------------------------------ the replay window


def test_window_and_replay() -> None:
    window = ReplayWindow()
    now = 1_000_000_000
    assert window.check(1, 5, now, now) is None
    assert window.check(1, 5, now, now) == "replay"
    assert window.check(1, 6, now, now) is None, "another datagram of the same millisecond (another tag)"
    assert window.check(2, 5, now, now) is None, "another key is another client"
    assert window.check(1, 7, now - 300_001, now) == "too_old"
    assert window.check(1, 7, now + 300_001, now) == "too_new"
    assert window.check(1, 7, now - 300_000, now) is None
    assert window.check(1, 7, now - 300_000, now) == "replay"


def test_window_is_bounded_and_never_forgets_a_replayable_entry() -> None:
    window = ReplayWindow(capacity=100)
    now = 1_000_000_000
    sent = [(i, now - 250_000 + i * 500) for i in range(1000)]  # a key holder floods over 500 s
    for fingerprint, stamp in sent:
        assert window.check(1, fingerprint, stamp, now) is None
        assert len(window) <= 100
    for fingerprint, stamp in sent:  # every one of them is still refused, remembered or below the floor
        assert window.check(1, fingerprint, stamp, now) in ("replay", "replay_floor")
    assert window.check(1, 5000, now + 300_000, now) is None, "the key itself goes on at the wall clock"
    assert window.check(2, 0, now - 250_000, now) is None, "one key's flood does not raise another key's floor"


def test_old_entries_leave_the_set_when_time_moves_on() -> None:
    window = ReplayWindow(capacity=100)
    for i in range(50):
        window.check(1, i, 0, 0)
    window.check(1, 99, 400_000, 400_000)
    assert len(window) == 1


# ------------------------------------------------------------------ the server's gate


def test_signed_request_gets_a_signed_exact_reply() -> None:
    server, client = keyed_server(KEY), ClientAuth(KEY)
    data = client.sign(quote(), WALL)
    out = server.handle_datagram(data, ADDR, 0.0)
    assert out is not None and len(out) <= len(data)
    inner = client.open(out, WALL)
    assert isinstance(inner, bytes)
    reply = decode_any_reply(inner)
    assert isinstance(reply, QuoteReply) and (reply.status, reply.total) == (Status.OK, 150)
    assert server.stats["auth.verified"] == 1


def test_spoofed_requests_are_never_answered() -> None:
    server = keyed_server(KEY)
    forged = [
        quote(),  # unsigned
        signed(quote(), OTHER),  # a key the server does not have
        signed(quote(), Key(KEY.key_id, b"z" * 32)),  # the right id, the wrong secret
        b"QP\x02\x81" + bytes(60),  # garbage with the flag
    ]
    assert [server.handle_datagram(d, ADDR, 0.0) for d in forged] == [None] * 4
    assert server.stats["replies"] == 0
    assert {k: v for k, v in server.stats.items() if k.startswith("auth.")} == {
        "auth.dropped.anonymous": 1,
        "auth.dropped.unknown_key": 1,
        "auth.dropped.bad_tag": 1,
        "auth.dropped.bad_checksum": 1,
    }


def test_replayed_request_is_dropped_even_though_the_cache_holds_its_reply() -> None:
    server = keyed_server(KEY)
    data = signed(quote())
    assert server.handle_datagram(data, ADDR, 0.0) is not None
    assert server.handle_datagram(data, ADDR, 1.0) is None
    assert server.handle_datagram(data, ("127.0.0.9", 5), 1.0) is None, "from another address too"
    assert server.stats["auth.dropped.replay"] == 2 and server.stats["cache_hits"] == 0


def test_old_and_future_timestamps_are_dropped() -> None:
    server = keyed_server(KEY)
    assert server.handle_datagram(signed(quote(1), at_s=WALL - 301), ADDR, 0.0) is None
    assert server.handle_datagram(signed(quote(2), at_s=WALL + 301), ADDR, 0.0) is None
    assert server.handle_datagram(signed(quote(3), at_s=WALL - 299), ADDR, 0.0) is not None
    assert (server.stats["auth.dropped.too_old"], server.stats["auth.dropped.too_new"]) == (1, 1)


def test_two_keys_at_once_each_reply_signed_with_the_requests_key() -> None:
    server = keyed_server(KEY, OTHER)
    for key in (KEY, OTHER):
        out = server.handle_datagram(ClientAuth(key).sign(quote(key.key_id), WALL), ADDR, 0.0)
        assert out is not None and isinstance(ClientAuth(key).open(out, WALL), bytes)
    assert isinstance(server.auth, ServerAuth)
    server.auth.set_keys({OTHER.key_id: OTHER})  # the rotation is over: the old key stops working
    assert server.handle_datagram(ClientAuth(KEY).sign(quote(9), WALL), ADDR, 0.0) is None


def test_allow_anonymous_answers_unsigned_unsigned() -> None:
    server = keyed_server(KEY, anonymous=True)
    out = server.handle_datagram(quote(), ADDR, 0.0)
    assert out is not None and out[3] == 2 and len(out) == 76
    assert server.handle_datagram(signed(quote(5), OTHER), ADDR, 0.0) is None, "a bad tag is still dropped"


def test_a_server_without_keys_never_answers_a_signed_request() -> None:
    server = QuoteServer(load_catalog(CATALOG))
    assert server.handle_datagram(signed(quote()), ADDR, 0.0) is None
    assert server.stats["auth.dropped.no_keys"] == 1 and server.stats["replies"] == 0


@pytest.mark.parametrize(
    "plain",
    [
        quote(),
        quote(item="no such thing"),
        quote(qty=0),
        quote()[:60] + b"\x01" + quote()[61:72] + quote()[72:],  # reserved byte set: a MALFORMED reply
        encode_batch_request(BatchRequest(7, (("apple", 1), ("kiwi", 2), ("nothing", 1)), 1)),
        encode_batch_request(BatchRequest(8, (("apple", 1),), 1)),
        encode_list_request(ListRequest(9, 0)),
        encode_list_request(ListRequest(10, 99)),
    ],
)
def test_no_signed_reply_is_larger_than_its_request(plain: bytes) -> None:
    plain = seal(plain[:-CRC_SIZE])
    server, client = keyed_server(KEY), ClientAuth(KEY)
    data = client.sign(plain, WALL)
    out = server.handle_datagram(data, ADDR, 0.0)
    assert out is not None, server.stats
    assert len(out) <= len(data)
    assert isinstance(client.open(out, WALL), bytes)


def test_client_refuses_unsigned_foreign_and_stale_replies() -> None:
    client = ClientAuth(KEY)
    reply = encode_reply(QuoteReply(1, Status.OK, "apple", 3, 50, 150, 1, transmission=1))
    assert client.open(reply, WALL) == "unsigned"
    assert client.open(signed(reply, OTHER), WALL) == "unknown_key"
    assert client.open(signed(reply, Key(1, b"z" * 32)), WALL) == "bad_tag"
    assert client.open(signed(reply, at_s=WALL - 400), WALL) == "out_of_window"
    assert client.open(signed(reply), WALL) == reply


def test_client_timestamps_are_the_wall_clock_however_fast_it_sends() -> None:
    """A client sending more than 1000 datagrams a second once ran its timestamps ahead of the wall
    clock (last + 1 ms each) until the server refused everything as too_new. Now each timestamp is
    the wall clock; requests of one millisecond differ in request id, hence in tag."""
    client, server = ClientAuth(KEY), keyed_server(KEY)
    sent = [client.sign(quote(request_id), WALL) for request_id in range(1, 3001)]
    assert {open_signed(d, {1: KEY}).timestamp_ms for d in sent} == {int(WALL * 1000)}
    assert [server.handle_datagram(d, ADDR, 0.0) is not None for d in sent] == [True] * 3000
    assert server.stats["auth.verified"] == 3000 and server.stats["auth.dropped.replay"] == 0


@pytest.mark.parametrize("secret_size", [16, 32, 64])
def test_precomputed_pads_give_standard_hmac_sha256(secret_size: int) -> None:
    key = Key(5, bytes(range(secret_size)))
    data = signed(quote(), key)
    body = data[: -CRC_SIZE - 16]
    assert data[-CRC_SIZE - 16 : -CRC_SIZE] == hmac.digest(key.secret, body, "sha256")[:16]


def test_auth_drops_are_exported_per_reason() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from udp_price.server.metrics import ServerCollector

    server = keyed_server(KEY)
    server.handle_datagram(quote(), ADDR, 0.0)
    server.handle_datagram(signed(quote(), OTHER), ADDR, 0.0)
    server.handle_datagram(signed(quote(2)), ADDR, 0.0)
    registry = CollectorRegistry()
    registry.register(ServerCollector(server))
    text = generate_latest(registry).decode()
    assert 'udp_price_auth_dropped_total{reason="anonymous"} 1.0' in text
    assert 'udp_price_auth_dropped_total{reason="unknown_key"} 1.0' in text
    assert 'udp_price_auth_dropped_total{reason="replay"} 0.0' in text
    assert "udp_price_auth_verified_total 1.0" in text


class _Catalog:
    """The catalog's duties, as far as KeyReloads needs them: counts what it was asked."""

    def __init__(self) -> None:
        self.reloads = 0

    def reload(self) -> None:
        self.reloads += 1

    def swap_in_ready(self) -> None:
        pass

    def tick(self, now: float) -> float | None:
        return None

    def close(self) -> None:
        pass


def test_keys_reload_with_the_catalog_and_on_watch_and_a_bad_file_keeps_them(tmp_path: Path) -> None:
    from udp_price.auth import new_key_line
    from udp_price.server.keyring import KeyReloads

    path = tmp_path / "keys.txt"
    path.write_text(new_key_line(1, KEY.secret) + "\n")
    path.chmod(0o600)
    auth = ServerAuth(read_keys_file(str(path)))
    catalog = _Catalog()
    reloads = KeyReloads(catalog, auth, str(path), watch_interval_s=0.5)
    path.write_text(new_key_line(1, KEY.secret) + "\n" + new_key_line(2, OTHER.secret) + "\n")
    assert reloads.tick(100.0) == 100.5 and sorted(auth.keys) == [1, 2], "--watch: a changed file is loaded"
    path.chmod(0o644)
    reloads.reload()  # SIGHUP: keys and catalog together; a file gone bad keeps the keys in use
    assert catalog.reloads == 1 and sorted(auth.keys) == [1, 2]
    path.chmod(0o600)
    path.write_text(new_key_line(2, OTHER.secret) + "\n")
    reloads.reload()
    assert catalog.reloads == 2 and sorted(auth.keys) == [2]
