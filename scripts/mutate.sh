#!/bin/sh
# Mutation testing of the pure core with mutmut (config: [tool.mutmut] in pyproject.toml; why mutmut
# and what the survivors mean: docs/testing.md, "Mutation testing").
#
# Usage: sh scripts/mutate.sh                 every mutant of the pure core, from scratch
#        sh scripts/mutate.sh --changed [REF] only the pure-core files that differ from REF
#                                             (default: $MUTATE_BASE, else HEAD~1); nothing to do if none
#        add --min-score N to exit 1 when fewer than N% of the mutants are killed.
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
while [ $# -gt 0 ]; do
  case "$1" in
    --changed)
      changed=1
      if [ $# -gt 1 ] && [ "${2#--}" = "$2" ]; then base="$2"; shift; fi ;;
    --min-score) min_score="$2"; shift ;;
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
fi

rm -rf mutants  # from scratch: cached verdicts of an older tree would flatter the score
start=$(date +%s)
# mutmut draws a progress line many times a second; keep only its last state.
# shellcheck disable=SC2086
.venv/bin/mutmut run $patterns >mutants.log 2>&1 || { tail -c 3000 mutants.log; exit 1; }
elapsed=$(( $(date +%s) - start ))
.venv/bin/mutmut results --all true >mutants.results 2>&1
.venv/bin/python - "$elapsed" "$min_score" "$patterns" <<'EOF'
import fnmatch
import sys
from collections import Counter

elapsed, min_score, patterns = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3].split()
rows = [line.strip().rsplit(": ", 1) for line in open("mutants.results", encoding="utf-8") if ": " in line]
rows = [(n, s) for n, s in rows if not patterns or any(fnmatch.fnmatch(n, p) for p in patterns)]
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
