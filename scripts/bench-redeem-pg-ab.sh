#!/usr/bin/env bash
# Redeem of two (or more) builds on one durable PostgreSQL, interleaved, with pgbench's one-row
# insert before and after (BENCHMARKS.md, "Feed events at commit"). Not part of CI.
#   scripts/bench-redeem-pg-ab.sh OLD_BINARY NEW_BINARY ...
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(mktemp -d /tmp/lianyu-ab-pg.XXXXXX)
trap 'scripts/postgres.sh stop "$dir" >/dev/null 2>&1 || true' EXIT
url=$(LIANYU_PG_DURABLE=1 LIANYU_PG_PORT=56435 scripts/postgres.sh start "$dir" 2>/dev/null | tail -1)
port=${url##*:}; port=${port%%/*}
pgbench=$(ls -d /usr/lib/postgresql/*/bin/pgbench | tail -1); psql=$(ls -d /usr/lib/postgresql/*/bin/psql | tail -1)
"$psql" -h 127.0.0.1 -p "$port" -U postgres -q -c "CREATE TABLE bench_insert (id bigserial PRIMARY KEY, member text NOT NULL, amount bigint NOT NULL, at bigint NOT NULL)"
printf '\\set n random(1, 1000000000)\nINSERT INTO bench_insert (member, amount, at) VALUES (%s, :n, :n);\n' "'m' || :n" > "$dir/insert.sql"
pg() { "$pgbench" -h 127.0.0.1 -p "$port" -U postgres -n -c 64 -j 2 -T 10 -f "$dir/insert.sql" postgres 2>/dev/null | grep -E "^tps"; }
echo "pgbench: $(pg)"
for round in 1 2; do
  for bin in "$@"; do
    printf "%s round %s: " "$bin" "$round"
    $bin bench redeem --duration 8s --warmup 2s --members 500 --database-url "$url" 2>&1 | grep -E "^redeem" | tr -s ' ' | cut -c1-110
  done
done
echo "pgbench: $(pg)"
