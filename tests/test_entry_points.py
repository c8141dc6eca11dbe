"""Entry points and the default catalog, as an operator meets them (found by the review of the
package layout): a broken ./catalog.csv is an error, never the sample's prices; every module path
shown as a command runs; `python -m udp_price` without a command is a usage error on stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

from udp_price import __version__


def run_in(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize("target", ["missing.csv", "loop"])
def test_a_broken_catalog_link_in_the_working_directory_is_exit_4_not_the_sample(tmp_path: Path, target: str) -> None:
    link = tmp_path / "catalog.csv"
    link.symlink_to(tmp_path / target if target != "loop" else link)
    r = run_in(tmp_path, "-m", "udp_price", "server", "--port", "0")
    assert r.returncode == 4, (r.stdout, r.stderr)
    assert "listening" not in r.stdout and "Traceback" not in r.stderr
    assert "catalog.csv" in r.stderr


def test_without_a_local_catalog_the_sample_is_served_and_named(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "udp_price", "server", "--port", "0"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on" in line and line.rstrip().endswith("sample_catalog.csv"), line
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


@pytest.mark.parametrize("module", ["server", "client", "proxy"])
def test_every_cli_module_runs_as_a_command(module: str) -> None:
    r = run_in(ROOT, "-m", f"udp_price.cli.{module}", "--version")
    assert r.returncode == 0 and __version__ in r.stdout, (r.stdout, r.stderr)


def test_python_m_udp_price_without_a_command_is_a_usage_error() -> None:
    r = run_in(ROOT, "-m", "udp_price")
    assert r.returncode == 2 and r.stdout == "" and "a command is required" in r.stderr
    extra = run_in(ROOT, "-m", "udp_price", "--version", "junk")
    assert extra.returncode == 2, "an extra argument after --version is not silently ignored"
