#!/bin/sh
# Set up a virtualenv (if missing) and run the demo: quotes from catalog.csv surviving 30% loss each way.
# Usage: sh scripts/demo.sh [--loss 0.3] [--seed 7]
set -eu
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e .
exec .venv/bin/python demo.py "$@"
