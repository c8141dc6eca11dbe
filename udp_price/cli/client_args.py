"""Argument types of ``udp-price-client``: each checks one flag's value and turns a bad one into a
usage error (exit 2) that names the flag, before any socket or file is opened."""

from __future__ import annotations

import argparse

from udp_price.cli.common import MAX_SECONDS, MAX_TIMEOUT_S, seconds
from udp_price.errors import BadQuantity
from udp_price.wire import parse_quantity as quantity_rule
from wire_format import MAX_BATCH


def parse_quantity(text: str) -> int:
    """The quantity rule (udp_price.wire.items): a whole number from 1 to MAX_QUANTITY, else a usage error (exit 2)."""
    try:
        return quantity_rule(text)
    except BadQuantity as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def whole_digits(text: str, limit: int = 9) -> bool:
    """Whole number of at most ``limit`` digits: checked before int() so 5,000 digits cost nothing."""
    return text.isascii() and text.isdigit() and len(text) <= limit


def timeout_arg(text: str) -> float:
    return seconds(text, "--timeout", 0.0, MAX_TIMEOUT_S, low_included=False)


def deadline_arg(text: str) -> float:
    return seconds(text, "--deadline", 0.0, MAX_SECONDS, low_included=False)


def at_least_one(text: str) -> int:
    if not whole_digits(text) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text[:32]!r} must be a whole number >= 1 (at most 9 digits)")
    return int(text)


def batch_arg(text: str) -> int:
    """Checked here, so a bad --batch is a usage error naming the flag, before any file is opened."""
    value = at_least_one(text)
    if value > MAX_BATCH:
        raise argparse.ArgumentTypeError(f"--batch must be 1 to {MAX_BATCH}, not {value}")
    return value


def retries_arg(text: str) -> int:
    if not whole_digits(text):
        raise argparse.ArgumentTypeError(f"--retries {text[:32]!r} must be a whole number >= 0 (at most 9 digits)")
    return int(text)
