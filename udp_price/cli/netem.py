"""The words people type for ``tc qdisc ... netem`` and Toxiproxy, as argparse types: percentages
(``30%`` or ``0.3``), times with units (``100ms``), rates with units (``1mbit``), netem's gemodel.

Units follow tc(8): times in us/usec, ms/msec, s/sec; rates in bit, kbit, mbit, gbit (bits per
second) or bps, kbps, mbps, gbps (bytes per second, tc's spelling). One difference, kept for the
command lines already written: a bare time is seconds here (tc reads microseconds)."""

from __future__ import annotations

import argparse
import math
import re

from udp_price.cli.common import MAX_SECONDS

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_TIME_UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "secs": 1.0, "ms": 1e-3, "msec": 1e-3, "us": 1e-6, "usec": 1e-6}
_RATE_UNITS = {
    "": 1.0,
    "bit": 1.0,
    "kbit": 1e3,
    "mbit": 1e6,
    "gbit": 1e9,
    "bps": 8.0,
    "kbps": 8e3,
    "mbps": 8e6,
    "gbps": 8e9,
}


def _split(text: str, what: str, units: dict[str, float]) -> float:
    match = re.fullmatch(_NUMBER + r"\s*([a-zA-Z]*)", text.strip()) if len(text) <= 32 else None
    if match is None or match.group(2).lower() not in units:
        known = ", ".join(u for u in units if u)
        raise argparse.ArgumentTypeError(f"{text[:32]!r} is not {what} (a number with one of: {known})")
    value = float(match.group(1)) * units[match.group(2).lower()]
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text[:32]!r} is not {what}")
    return value


def probability(text: str) -> float:
    """'30%' or '0.3' -> 0.3; anything outside [0, 1] (0% to 100%) is refused."""
    stripped = text.strip()
    percent = stripped.endswith("%")
    number = stripped[:-1] if percent else stripped
    if len(number) > 32 or re.fullmatch(_NUMBER, number) is None:
        raise argparse.ArgumentTypeError(f"{text[:32]!r} is not a probability (0.3 or 30%)")
    value = float(number) / (100.0 if percent else 1.0)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text[:32]!r} is not a probability: 0 to 1, or 0% to 100%")
    return value


def duration(text: str) -> float:
    """'100ms' -> 0.1 seconds; '2' -> 2 seconds; us, ms and s accepted; at most a day (MAX_SECONDS)."""
    value = _split(text, "a time", _TIME_UNITS)
    if value > MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"{text[:32]!r} is more than {MAX_SECONDS:g} s")
    return value


def positive_duration(text: str) -> float:
    value = duration(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text[:32]!r} must be greater than 0")
    return value


def rate(text: str) -> float:
    """'1mbit' -> 1e6 bits per second; '125kbps' -> 1e6 (tc: bps is bytes per second)."""
    value = _split(text, "a rate", _RATE_UNITS)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text[:32]!r} must be greater than 0")
    return value


def count(text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 9) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text[:32]!r} must be a whole number >= 1")
    return int(text)


def gemodel(values: list[str]) -> tuple[float, float, float, float]:
    """netem's ``gemodel p [r [1-h [1-k]]]``: r defaults to 1 - p, 1-h to 100%, 1-k to 0%."""
    if not 1 <= len(values) <= 4:
        raise argparse.ArgumentTypeError("--gemodel takes 1 to 4 values: p [r [1-h [1-k]]]")
    p = probability(values[0])
    r = probability(values[1]) if len(values) > 1 else 1.0 - p
    bad_loss = probability(values[2]) if len(values) > 2 else 1.0
    good_loss = probability(values[3]) if len(values) > 3 else 0.0
    return p, r, bad_loss, good_loss
