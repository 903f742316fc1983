#!/usr/bin/env bash
# Runs every benchmark at full size and writes var/bench/<name>.json (see docs/benchmarks.md).
#   scripts/bench.sh            all of them
#   scripts/bench.sh ledger     only those named
# The human table of each goes to the terminal; the JSON line it prints last goes to the
# file. Exits 1 if any benchmark failed its own check (or crashed), after running the rest.
set -uo pipefail
cd "$(dirname "$0")/.."

# Every benchmark `clearhouse bench` has; add each new one here.
all=(ledger auth payments recon)
names=("$@")
[ ${#names[@]} -eq 0 ] && names=("${all[@]}")

mkdir -p var/bench
status=0
for name in "${names[@]}"; do
  out=var/bench/$name.out
  echo "== clearhouse bench $name" >&2
  .venv/bin/clearhouse bench "$name" --json | tee "$out"
  rc=${PIPESTATUS[0]}
  last=$(tail -n 1 "$out")
  if [ -n "$last" ] && python3 -c 'import json, sys; json.loads(sys.argv[1])' "$last" 2>/dev/null; then
    printf '%s\n' "$last" > "var/bench/$name.json"
  else
    echo "bench.sh: $name printed no JSON line; var/bench/$name.json not written" >&2
    [ "$rc" -eq 0 ] && rc=1
  fi
  rm -f "$out"
  if [ "$rc" -ne 0 ]; then
    echo "bench.sh: $name failed (exit $rc)" >&2
    status=1
  fi
done
exit $status
