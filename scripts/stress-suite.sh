#!/bin/sh
# Run the whole suite N times in a row under CI=true while two busy Python loops load the CPUs,
# stopping at the first failure (no retries): a test that fails under load is a bug, not bad luck.
#
# Usage: sh scripts/stress-suite.sh N [pytest args...]     e.g. sh scripts/stress-suite.sh 10 -q
# The burners are bounded in time (BURN_S, default 4 h) and killed when this script exits.
set -eu
cd "$(dirname "$0")/.."
n="${1:?usage: sh scripts/stress-suite.sh N [pytest args...]}"
shift
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
burn_s="${BURN_S:-14400}"
burners=""
stop_burners() {
  for pid in $burners; do kill "$pid" 2>/dev/null || true; done
}
trap stop_burners EXIT
trap 'exit 130' INT TERM
for _ in 1 2; do
  python3 -c "import time
end = time.monotonic() + $burn_s
while time.monotonic() < end:
    pass" &
  burners="$burners $!"
done
echo "stress-suite: $n runs under CI=true with two CPU burners (pids$burners)"
i=1
while [ "$i" -le "$n" ]; do
  started=$(date +%s)
  if CI=true .venv/bin/python -m pytest -p no:cacheprovider "$@"; then
    echo "stress-suite: run $i/$n passed in $(( $(date +%s) - started )) s"
  else
    echo "stress-suite: run $i/$n FAILED after $(( i - 1 )) clean run(s) in a row"
    exit 1
  fi
  i=$(( i + 1 ))
done
echo "stress-suite: $n/$n runs passed in a row"
