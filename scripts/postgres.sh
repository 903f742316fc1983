#!/usr/bin/env bash
# A throw-away PostgreSQL server for tests and benchmarks, on a free loopback port.
#   scripts/postgres.sh start DIR [--durable]   prints the SQLAlchemy URL (also in DIR/url)
#   scripts/postgres.sh stop DIR
# Installs Debian's postgresql package when no server binaries are found. PostgreSQL
# refuses to run as root, so as root the server runs as the 'postgres' user (created
# by the package) or, failing that, a 'clearhouse-pg' user made here.
set -euo pipefail

cmd=${1:?start or stop}
dir=$(realpath -m "${2:?data directory}")
durable=${3:-}

find_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  command -v initdb >/dev/null 2>&1 && { dirname "$(command -v initdb)"; return 0; }
  return 1
}

as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u "$owner" -- "$@"
  else
    "$@"
  fi
}

owner=$(id -un)
if [ "$(id -u)" = 0 ]; then
  if id postgres >/dev/null 2>&1; then owner=postgres; else
    id clearhouse-pg >/dev/null 2>&1 || useradd --system --no-create-home clearhouse-pg
    owner=clearhouse-pg
  fi
fi

case "$cmd" in
start)
  if ! bin=$(find_bin); then
    echo "postgres.sh: installing Debian's postgresql package" >&2
    if [ "$(id -u)" != 0 ]; then echo "postgres.sh: need root to install postgresql" >&2; exit 1; fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    # The package starts a cluster of its own; we only want the binaries.
    service postgresql stop >/dev/null 2>&1 || true
    bin=$(find_bin)
    id postgres >/dev/null 2>&1 && owner=postgres
  fi
  if [ -f "$dir/data/postmaster.pid" ] && as_owner "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    cat "$dir/url"; exit 0
  fi
  rm -rf "$dir"
  mkdir -p "$dir"
  chown "$owner" "$dir" 2>/dev/null || true
  chmod 700 "$dir"
  # Every ancestor must be traversable by the server's user.
  p="$dir"; while [ "$p" != / ]; do p=$(dirname "$p"); chmod o+x "$p" 2>/dev/null || true; done
  as_owner "$bin/initdb" -D "$dir/data" -U clearhouse --auth=trust --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  opts="-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200 -c shared_buffers=256MB"
  if [ "$durable" != "--durable" ]; then
    # Tests do not need crash durability of the test server itself; benchmarks pass --durable.
    opts="$opts -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  fi
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -o "$opts" -w -t 60 start >/dev/null
  as_owner "$bin/createdb" -h 127.0.0.1 -p "$port" -U clearhouse clearhouse
  url="postgresql+psycopg://clearhouse@127.0.0.1:$port/clearhouse"
  echo "$url" > "$dir/url"
  echo "$url"
  ;;
stop)
  bin=$(find_bin) || exit 0
  if [ -d "$dir/data" ]; then
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  ;;
*)
  echo "usage: $0 start|stop DIR [--durable]" >&2; exit 2;;
esac
