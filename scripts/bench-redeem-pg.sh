#!/usr/bin/env bash
# Redeem on a durable PostgreSQL beside pgbench's one-row insert, on the same server in the
# same run (BENCHMARKS.md, "Redeem on durable PostgreSQL"). Not part of CI: it takes minutes.
#   scripts/bench-redeem-pg.sh [SECONDS]
# Starts a throwaway PostgreSQL with fsync and synchronous commit on, runs pgbench (64 clients,
# one INSERT of one row per transaction), then `lianyu bench baseline redeem` (64 callers) with
# its in-process mesh on that server, and stops the server.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
dir=$(mktemp -d /tmp/lianyu-bench-pg.XXXXXX)
trap 'scripts/postgres.sh stop "$dir" >/dev/null 2>&1 || true' EXIT
url=$(LIANYU_PG_DURABLE=1 LIANYU_PG_PORT=56432 scripts/postgres.sh start "$dir")
port=${url##*:}; port=${port%%/*}
pgbench=$(command -v pgbench || ls -d /usr/lib/postgresql/*/bin/pgbench | sort -V | tail -n 1)
psql=$(command -v psql || ls -d /usr/lib/postgresql/*/bin/psql | sort -V | tail -n 1)
cargo build --release -q -p lianyu

echo "== server: $("$psql" -h 127.0.0.1 -p "$port" -U postgres -At -c "SELECT 'fsync=' || current_setting('fsync') || ', synchronous_commit=' || current_setting('synchronous_commit')")"
"$psql" -h 127.0.0.1 -p "$port" -U postgres -q -c \
  "CREATE TABLE bench_insert (id bigserial PRIMARY KEY, member text NOT NULL, amount bigint NOT NULL, at bigint NOT NULL)"
script="$dir/insert.sql"
cat >"$script" <<'SQL'
\set n random(1, 1000000000)
INSERT INTO bench_insert (member, amount, at) VALUES ('m' || :n, :n, :n);
SQL
echo "== pgbench: one-row INSERT, 64 clients, ${seconds}s"
"$pgbench" -h 127.0.0.1 -p "$port" -U postgres -n -c 64 -j 2 -T "$seconds" -f "$script" postgres \
  | grep -E "tps|latency average|number of transactions actually processed"

echo "== lianyu bench baseline redeem, 64 callers, ${seconds}s, mesh on that server"
target/release/lianyu bench baseline redeem --duration "${seconds}s" --warmup 2s --members 500 \
  --database-url "$url"
