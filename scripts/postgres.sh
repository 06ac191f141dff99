#!/usr/bin/env bash
# A throwaway PostgreSQL for tests, on a loopback port in a temporary directory.
#   scripts/postgres.sh start DIR   installs the server if missing, starts it, prints its admin URL
#   scripts/postgres.sh stop DIR    stops it and removes DIR
# LIANYU_PG_DURABLE=1 keeps fsync and synchronous commit on (for benchmarks).
# The server refuses to run as root, so as root it runs as the unprivileged user lianyu-pg.
set -euo pipefail
cmd=${1:?start or stop}
dir=${2:?a directory}
port=${LIANYU_PG_PORT:-55432}

# The first free loopback port from $port on, so a server left running elsewhere (another
# checkout's tests) never makes this one fail to start.
free_port() {
  local p=$1
  while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
  echo "$p"
}

find_bin() {
  local name=$1
  if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return; fi
  ls -d /usr/lib/postgresql/*/bin/"$name" 2>/dev/null | sort -V | tail -n 1
}

as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u lianyu-pg -- "$@"; else "$@"; fi
}

case "$cmd" in
start)
  if [ -z "$(find_bin initdb)" ]; then
    echo "postgres.sh: installing Debian's postgresql" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
  fi
  initdb=$(find_bin initdb); pg_ctl=$(find_bin pg_ctl)
  port=$(free_port "$port")
  if [ "$(id -u)" = 0 ] && ! id lianyu-pg >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin lianyu-pg
  fi
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown lianyu-pg "$dir"
  as_owner "$initdb" -D "$dir/data" -U postgres -A trust --no-sync -E UTF8 >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
  # Throwaway data: durability off for speed, unless LIANYU_PG_DURABLE=1 (benchmarks: fsync
  # and synchronous commit on, as in production); a connection limit for parallel tests.
  durability="-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  [ "${LIANYU_PG_DURABLE:-0}" = 1 ] && durability=""
  as_owner "$pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 $durability -c max_connections=800" >&2 \
    || { cat "$dir/server.log" >&2; exit 1; }
  echo "postgres://postgres@127.0.0.1:$port/postgres"
  ;;
stop)
  pg_ctl=$(find_bin pg_ctl)
  if [ -n "$pg_ctl" ] && [ -d "$dir/data" ]; then
    as_owner "$pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true
  fi
  rm -rf "$dir"
  ;;
*)
  echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
