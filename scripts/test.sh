#!/bin/sh
# Set up a virtualenv (if missing) and run the whole test suite, then the linters.
# Usage: sh scripts/test.sh [pytest args...]
set -eu
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
.venv/bin/python -m pytest "$@"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
