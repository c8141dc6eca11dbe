"""Attacks on servers started from the CLI (fuzz/attacks.py): no amplification, no loop, no death.

The spoofing attacks need a raw socket: they skip without root and fail under CI=true (root).
"""

from __future__ import annotations

import attacks
import pytest
import rootenv

from udp_price.wire import batch_reply_size


def need_root() -> None:
    rootenv.need_root("raw socket to spoof a source address on loopback")


def check(result: attacks.Result, answers: int = 0) -> None:
    assert result.alive, f"{result.attack}: a server stopped answering"
    assert result.ratio <= 1.0, f"{result.attack}: {result.out_bytes} bytes out for {result.sent_bytes} in"
    assert result.extra_datagrams <= answers, f"{result.attack}: {result.extra_datagrams} datagrams kept coming"
    assert "tracebacks 0" in result.detail


def test_cache_crc_collision_does_not_amplify() -> None:
    result = attacks.cache_crc_collision(spoof=False)
    check(result)
    # The forged one-line batch may only ever get a one-line batch reply, never the cached list page.
    assert f"largest to the 56-byte batch {batch_reply_size(1)} bytes" in result.detail, result.detail


def test_intact_replies_and_unknown_kinds_get_no_answer() -> None:
    result = attacks.silent("replies", attacks.sealed_replies())
    check(result)
    assert result.out_bytes == 0 and ", 0 answered" in result.detail


def test_a_corrupted_version_byte_gets_no_answer() -> None:
    result = attacks.silent("version", attacks.corrupted_version())
    check(result)
    assert result.out_bytes == 0 and ", 0 answered" in result.detail


def test_cache_crc_collision_toward_a_spoofed_victim() -> None:
    need_root()
    result = attacks.cache_crc_collision(spoof=True)
    check(result)
    # The forged one-line batch may only ever get a one-line batch reply, never the cached list page.
    assert f"largest to the 56-byte batch {batch_reply_size(1)} bytes" in result.detail, result.detail


@pytest.mark.parametrize(("kind", "answers"), [("reply", 0), ("malformed", 1), ("other_version", 1), ("self", 1)])
def test_one_spoofed_datagram_starts_no_loop(kind: str, answers: int) -> None:
    # "answers": the one reply a spoofed request earns, which the peer (or the server itself) then drops.
    need_root()
    result = attacks.spoofed_loop(kind)
    check(result, answers)
    assert result.extra_datagrams == answers


def test_reflector_source_ports_get_nothing() -> None:
    need_root()
    result = attacks.reflector_ports()
    check(result)
    assert result.out_bytes == 0
