"""Run tshark with the udp-price Lua dissector and read its JSON back as flat frames.

Used by tests/test_wireshark.py. tshark runs as root in CI: Lua scripts given with ``-X lua_script:``
load as root (only the personal plugin folders are skipped), so no privilege drop is needed."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from helpers import ROOT
from rootenv import cannot_run

PLUGIN = ROOT / "contrib" / "wireshark" / "udp_price.lua"
SUBTREES = ("udp_price.line_tree", "udp_price.entry_tree")


@dataclass
class Frame:
    """One dissected packet: its udp_price fields (every value of each, in tree order), its batch
    lines or list entries (one dict each), and what the capture says about it."""

    number: int
    time: Decimal
    inbound: bool
    src_port: int
    dst_port: int
    comment: str
    fields: dict[str, list[str]] = field(default_factory=dict)
    subtrees: list[dict[str, list[str]]] = field(default_factory=list)

    def get(self, name: str) -> str | None:
        values = self.fields.get(name)
        return values[0] if values else None

    def has(self, name: str) -> bool:
        return name in self.fields


def tshark() -> str:
    """The tshark binary, or skip (fail under CI=true) without it."""
    path = shutil.which("tshark")
    if path is None:
        cannot_run("needs tshark (Debian package; .ci/run installs it)")
    return path


def dissect(capture: Path, *extra: str) -> list[Frame]:
    """Every frame of ``capture`` as tshark with our plugin sees it (two passes, so requests know
    their responses; heuristics first, so any port is recognised)."""
    cmd = [
        tshark(),
        "-X", f"lua_script:{PLUGIN}",
        "-o", "udp.try_heuristic_first:TRUE",
        "-2",
        "-r", str(capture),
        "-T", "json",
        "--no-duplicate-keys",
        "-J", "frame udp udp_price pkt_comment",
        *extra,
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    stderr = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 0, stderr
    try:  # strictly: the dissector must never make tshark's output invalid UTF-8 (an item cut mid-character)
        stdout = done.stdout.decode("utf-8")
    except UnicodeDecodeError as e:
        raise AssertionError(f"tshark's JSON is not UTF-8 ({e}): {done.stdout[e.start - 60 : e.end + 20]!r}") from None
    assert "Lua Error" not in stdout and "Lua: Error" not in stderr, stderr + stdout[-2000:]
    return [_frame(packet["_source"]["layers"]) for packet in json.loads(stdout or "[]")]


def _frame(layers: dict[str, Any]) -> Frame:
    frame, udp = layers["frame"], layers.get("udp", {})
    comment = layers.get("pkt_comment", {}).get("frame.comment", "")
    direction = frame.get("frame.packet_flags_tree", {}).get("frame.packet_flags_direction", "0x0")
    out = Frame(
        number=int(frame["frame.number"]),
        time=Decimal(frame["frame.time_epoch"]),
        inbound=int(direction, 16) == 1,
        src_port=int(udp.get("udp.srcport", 0)),
        dst_port=int(udp.get("udp.dstport", 0)),
        comment=comment if isinstance(comment, str) else " | ".join(comment),
    )
    if "udp_price" in layers:
        _flatten(layers["udp_price"], out.fields, out.subtrees)
    return out


def _flatten(node: dict[str, Any], into: dict[str, list[str]], subtrees: list[dict[str, list[str]]]) -> None:
    for key, value in node.items():
        if key in SUBTREES:
            for tree in value if isinstance(value, list) else [value]:
                sub: dict[str, list[str]] = {}
                _flatten(tree, sub, subtrees)
                subtrees.append(sub)
        elif isinstance(value, dict):
            _flatten(value, into, subtrees)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                _flatten(item, into, subtrees)
        else:
            into.setdefault(key, []).extend(value if isinstance(value, list) else [value])


def seconds(text: str) -> Decimal:
    """tshark's relative time ('0.000380000') as an exact Decimal."""
    return Decimal(text.split()[0])
