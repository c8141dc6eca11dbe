#!/bin/sh
# Mutation testing of the pure core with mutmut (config: [tool.mutmut] in pyproject.toml; why mutmut
# and what the survivors mean: docs/testing.md, "Mutation testing").
#
# Usage: sh scripts/mutate.sh                 every mutant of the pure core, from scratch
#        sh scripts/mutate.sh --changed [REF] only the pure-core files that differ from REF
#                                             (default: $MUTATE_BASE, else HEAD~1); nothing to do if none
#        add --min-score N to exit 1 when fewer than N% of the mutants are killed;
#        add --time-limit S to stop mutating after S seconds of wall clock (default for --changed:
#        $MUTATE_TIME_LIMIT, else 600; none for the full run). What a stopped run did not check is
#        listed as NOT CHECKED and left out of the score; a stopped run still exits 0.
#
# Exits 1 if mutmut itself fails (the unmutated tests fail, a crash): that is never report-only.
#
# Prints the runtime, the score (killed / all mutants; a mutant no selected test reaches counts
# as surviving) and every surviving mutant by name: `.venv/bin/mutmut show NAME` shows its diff.
set -eu
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'

changed=""
base="${MUTATE_BASE:-HEAD~1}"
min_score=0
time_limit=""
while [ $# -gt 0 ]; do
  case "$1" in
    --changed)
      changed=1
      if [ $# -gt 1 ] && [ "${2#--}" = "$2" ]; then base="$2"; shift; fi ;;
    --min-score) min_score="$2"; shift ;;
    --time-limit) time_limit="$2"; shift ;;
    *) echo "mutate.sh: unknown argument $1 (see the usage at the top of scripts/mutate.sh)" >&2; exit 2 ;;
  esac
  shift
done

# The files mutmut mutates, from pyproject.toml (one list to keep).
core_files=$(.venv/bin/python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["tool"]["mutmut"]["only_mutate"]))')
patterns=""
if [ -n "$changed" ]; then
  touched=$(git diff --name-only "$base" -- $core_files 2>/dev/null || true)
  if [ -z "$touched" ]; then
    echo "mutate.sh: no pure-core file differs from $base; nothing to mutate"
    exit 0
  fi
  for f in $touched; do
    [ -f "$f" ] || continue
    patterns="$patterns $(echo "${f%.py}" | tr / .).*"
  done
  echo "mutate.sh: mutating the pure-core files changed since $base:" $touched
  # CI runs this after the tests: bound it so it can never push CI past its budget.
  [ -n "$time_limit" ] || time_limit="${MUTATE_TIME_LIMIT:-600}"
fi

rm -rf mutants  # from scratch: cached verdicts of an older tree would flatter the score
start=$(date +%s)
# mutmut draws a progress line many times a second; keep only its last state.
# On the time limit, timeout(1) sends SIGINT to mutmut's process group: mutmut stops its workers
# and keeps every verdict reached so far; 30 s later anything left is killed.
rc=0
if [ -n "$time_limit" ]; then
  # shellcheck disable=SC2086
  timeout --signal=INT --kill-after=30 "$time_limit" .venv/bin/mutmut run $patterns >mutants.log 2>&1 || rc=$?
else
  # shellcheck disable=SC2086
  .venv/bin/mutmut run $patterns >mutants.log 2>&1 || rc=$?
fi
elapsed=$(( $(date +%s) - start ))
stopped=""
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
  stopped="$time_limit"
elif [ "$rc" != 0 ]; then
  tail -c 3000 mutants.log
  echo "mutate.sh: mutmut failed (exit $rc; whole log in mutants.log): no mutation report" >&2
  exit 1
fi
if ! .venv/bin/mutmut results --all true >mutants.results 2>&1; then
  if [ -n "$stopped" ]; then  # stopped while generating mutants or timing the tests: no verdicts yet
    echo "mutation: STOPPED at the time limit of $stopped s before any mutant was checked; NOT CHECKED:${patterns:- everything}"
    exit 0
  fi
  cat mutants.results
  echo "mutate.sh: mutmut results failed: no mutation report" >&2
  exit 1
fi
.venv/bin/python - "$elapsed" "$min_score" "$patterns" "$stopped" <<'EOF'
import fnmatch
import sys
from collections import Counter

elapsed, min_score, patterns, stopped = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3].split(), sys.argv[4]
rows = [line.strip().rsplit(": ", 1) for line in open("mutants.results", encoding="utf-8") if ": " in line]
rows = [(n, s) for n, s in rows if not patterns or any(fnmatch.fnmatch(n, p) for p in patterns)]
# Not reached before the time limit (or being checked when it struck): no verdict either way.
UNFINISHED = ("not checked", "check was interrupted by user")
unfinished = sorted(n for n, s in rows if s in UNFINISHED)
rows = [(n, s) for n, s in rows if s not in UNFINISHED]
if unfinished:
    why = f"STOPPED at the time limit of {stopped} s" if stopped else "INCOMPLETE (mutmut was interrupted)"
    print(f"mutation: {why}; {len(unfinished)} mutants NOT CHECKED (not in the score):")
    for name in unfinished:
        print(f"  NOT CHECKED: {name}")
if stopped:
    if not rows:
        print("mutation: the time limit struck before any mutant was checked (see mutants.log)")
        sys.exit(0)
status = Counter(s for _, s in rows)
killed = status["killed"] + status["timeout"] + status["caught by type check"]
total = len(rows)
score = 100.0 * killed / total if total else 100.0
print(f"mutation: {total} mutants in {elapsed // 60} min {elapsed % 60} s: " + ", ".join(f"{v} {k}" for k, v in sorted(status.items())))
print(f"mutation score: {score:.1f}% killed ({killed}/{total})")
survivors = [n for n, s in rows if s not in ("killed", "timeout", "caught by type check")]
for name in sorted(survivors):
    print(f"  survivor: {name} ({dict(rows)[name]})")
if score < min_score:
    print(f"mutation score {score:.1f}% is below --min-score {min_score:g}%")
    sys.exit(1)
EOF
