"""Tests that need root and Debian packages: skip on a laptop with a reason, but never skip in CI."""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def require(*commands: str) -> None:
    """Skip (or, under CI=true, fail) unless we are root and every command is installed."""
    missing = [c for c in commands if shutil.which(c) is None]
    reason = ""
    if os.geteuid() != 0:
        reason = "needs root (network namespaces)"
    elif missing:
        reason = f"needs {', '.join(missing)} (Debian packages; .ci/run installs them)"
    if reason:
        cannot_run(reason)


def cannot_run(reason: str) -> NoReturn:
    """Skip with ``reason`` on a laptop; under CI=true a test that cannot run is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but this test cannot run: {reason}")
    pytest.skip(reason)


def need_root(why: str) -> None:
    if os.geteuid() != 0:
        cannot_run(f"needs root ({why})")
