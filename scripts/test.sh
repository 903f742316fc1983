#!/usr/bin/env bash
# Runs the whole suite on SQLite and on a real PostgreSQL server started here.
set -euo pipefail
cd "$(dirname "$0")/.."
pgdir=var/pgtest
url=$(scripts/postgres.sh start "$pgdir")
trap 'scripts/postgres.sh stop "$pgdir"' EXIT
export CLEARHOUSE_TEST_POSTGRES_URL="$url"
export CLEARHOUSE_TEST_BACKENDS="sqlite,postgresql"
# Two workers on two cores: each gets its own PostgreSQL database (tests/conftest.py).
.venv/bin/pytest -n auto "$@"
