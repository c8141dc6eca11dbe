"""The package layout keeps its promises: no import cycle, imports run one way (command lines ->
shells -> pure core -> wire -> wire_format), the pure core touches no socket, event loop, clock or
log, the construct reference codec is for tests only, and no module grows past 450 lines."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import ROOT

PACKAGE = ROOT / "udp_price"
MAX_LINES = 450
PURE_CORE = (
    "udp_price.errors",
    "udp_price.address",
    "udp_price.wire",
    "udp_price.catalog",
    "udp_price.reflectors",
    "udp_price.auth",
    "udp_price.server.core",
    "udp_price.server.answers",
    "udp_price.server.guards",
    "udp_price.server.filewatch",
    "udp_price.client.session",
    "udp_price.client.events",
    "udp_price.client.recovery",
    "udp_price.client.loss_detection",
    "udp_price.client.reply_checks",
    "udp_price.client.retry",
    "udp_price.faults.plan",
    "udp_price.client.congestion",
    "udp_price.server.overload",
)
IMPURE = {"socket", "asyncio", "time", "logging", "selectors", "signal", "threading"}
LAYERS = (
    ("wire_format",),
    ("udp_price.errors", "udp_price.address", "udp_price.__init__"),
    ("udp_price.wire",),
    ("udp_price.catalog_index", "udp_price.catalog_fast"),
    ("udp_price.catalog", "udp_price.reflectors"),
    PURE_CORE,
    (
        "udp_price.server",
        "udp_price.client",
        "udp_price.faults",
        "udp_price.bulk",
        "udp_price.web",
        "udp_price.web_search",
    ),
    ("udp_price.cli",),
    ("udp_price.__main__",),
)
"""Lowest first; a module may import only from its own layer or below (the first matching prefix,
most specific first, decides a module's layer)."""


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 2 else parts)


def modules() -> dict[str, Path]:
    found = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    found["wire_format"] = ROOT / "wire_format.py"
    return found


def imports_of(path: Path) -> set[str]:
    """Every module this file imports, at any depth (lazy imports inside functions included)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {m for m in imports_of(path) if m in known and m != name} for name, path in known.items()}


def layer(name: str) -> int:
    best, rank = -1, -1
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank >= 0, f"{name} belongs to no layer: add it to LAYERS"
    return rank


def test_there_is_no_import_cycle() -> None:
    edges = graph()
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(name) :], name]))
        if name in done:
            return
        for target in sorted(edges[name]):
            visit(target, [*path, name])
        done.add(name)

    for name in sorted(edges):
        visit(name, [])


def test_imports_run_one_way() -> None:
    upward = [
        f"{source} (layer {layer(source)}) imports {target} (layer {layer(target)})"
        for source, targets in graph().items()
        for target in targets
        if layer(target) > layer(source) and not (source.startswith(target + ".") and target != "udp_price")
    ]
    assert upward == []


def test_the_pure_core_imports_no_socket_event_loop_clock_or_logging() -> None:
    edges, known = graph(), modules()
    pure = [name for name in known if any(name == p or name.startswith(p + ".") for p in PURE_CORE)]
    assert len(pure) >= len(PURE_CORE)
    for name in pure:
        reached, todo = set(), [name]
        while todo:  # everything it imports from the project, transitively
            current = todo.pop()
            if current not in reached:
                reached.add(current)
                todo.extend(edges[current])
        for module in reached:
            bad = {m.split(".")[0] for m in imports_of(known[module])} & IMPURE
            assert not bad, f"{name} reaches {module}, which imports {sorted(bad)}"


def test_the_construct_reference_codec_is_only_the_test_oracle() -> None:
    users = [name for name, targets in graph().items() if "udp_price.wire.reference" in targets]
    assert users == []


def test_no_module_is_longer_than_450_lines() -> None:
    project = [*PACKAGE.rglob("*.py"), *ROOT.glob("*.py")]
    long = {str(p.relative_to(ROOT)): n for p in project if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_root_holds_only_the_entry_points_and_the_layout_module() -> None:
    top_level = {p.stem for p in ROOT.glob("*.py")} - {"udp_server", "udp_client", "fault_proxy", "demo"}
    assert top_level == {"wire_format"}, "root modules other than the entry points belong in udp_price/"
    layout_imports = {m.split(".")[0] for m in imports_of(ROOT / "wire_format.py")}
    assert layout_imports == {"__future__", "construct"}, "wire_format holds the byte layout and nothing else"


def test_the_entry_points_only_call_the_package() -> None:
    for name, module in [
        ("udp_server", "server"),
        ("udp_client", "client"),
        ("fault_proxy", "proxy"),
        ("demo", "demo"),
    ]:
        assert imports_of(ROOT / f"{name}.py") == {f"udp_price.cli.{module}", f"udp_price.cli.{module}.main"}


def test_the_sample_catalog_is_the_root_catalog() -> None:
    assert (PACKAGE / "sample_catalog.csv").read_bytes() == (ROOT / "catalog.csv").read_bytes()
