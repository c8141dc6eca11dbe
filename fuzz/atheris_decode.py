"""Coverage-guided fuzz target for the decoders (by hand; not part of CI).

    pip install atheris
    python fuzz/atheris_decode.py -atheris_runs=2000000

Every input must decode or raise MalformedDatagram; anything else is a finding. Whatever
decodes must re-encode to the very same bytes.
"""

from __future__ import annotations

import sys
import zlib

import atheris

with atheris.instrument_imports():
    from udp_price import wire as wf


def test_one_input(raw: bytes) -> None:
    # A CRC32 stops a coverage-guided fuzzer at the door, so each input is also tried with its
    # last four bytes replaced by a valid CRC32: that reaches the parse and meaning checks.
    for data in (raw, raw[:-4] + zlib.crc32(raw[:-4]).to_bytes(4, "big")):
        check(data)


def check(data: bytes) -> None:
    for decode, encode in (
        (wf.decode_request, wf.encode_request),
        (wf.decode_reply, wf.encode_reply),
        (wf.decode_batch_request, wf.encode_batch_request),
        (wf.decode_batch_reply, wf.encode_batch_reply),
    ):
        try:
            message = decode(data)
        except wf.MalformedDatagram:
            continue
        if encode(message) != data:  # type: ignore[arg-type]
            raise AssertionError(f"{decode.__name__} accepted bytes it would not produce: {data.hex()}")


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
