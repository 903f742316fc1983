#!/usr/bin/env bash
# Runs the whole suite on SQLite and on a real PostgreSQL server started here.
set -euo pipefail
cd "$(dirname "$0")/.."
pgdir=var/pgtest
url=$(scripts/postgres.sh start "$pgdir")
trap 'scripts/postgres.sh stop "$pgdir"' EXIT
export CLEARHOUSE_TEST_POSTGRES_URL="$url"
export CLEARHOUSE_TEST_BACKENDS="sqlite,postgresql"
# The browser tests (tests/browser) drive Debian's Chromium with Playwright.
CLEARHOUSE_TEST_CHROMIUM=$(scripts/chromium.sh)
export CLEARHOUSE_TEST_CHROMIUM
# Two workers on two cores: each gets its own PostgreSQL database (tests/conftest.py).
if [ $# -gt 0 ]; then
    .venv/bin/pytest -n auto "$@"  # not exec: the trap must still stop the server
    exit
fi
# The whole suite in two runs: the default run (kept under 15 minutes), then the suites
# marked slow (crash safety, concurrency, the exhaustive API walks, the benchmarks' own
# tests). Both always run; the exit status is the first failure's.
status=0
.venv/bin/pytest -n auto -m "not slow" --durations=15 || status=$?
.venv/bin/pytest -n auto -m slow --durations=15 || status=$((status ? status : $?))
exit "$status"
