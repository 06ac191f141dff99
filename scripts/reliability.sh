#!/usr/bin/env bash
# The long fault and load runs behind RELIABILITY.md (not part of CI): goodput at 64 and at
# 2,000 calls in flight in one run, the cost of 10,000 idle feed streams, the full-disk test on
# a real tmpfs, and the database-outage test on a throwaway PostgreSQL. Prints one JSON line per
# load figure; the tests print their own timings (--nocapture).
#   scripts/reliability.sh            everything
#   LIANYU_BENCH_DURATION=20s scripts/reliability.sh
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${LIANYU_BENCH_DURATION:-10s}
cargo build --release -q -p lianyu
bin=target/release/lianyu

echo "== goodput: enrolments at 64 and at 2000 calls in flight (in-process mesh, SQLite, client without backoff)"
"$bin" bench baseline enroll --concurrency 64 --channels 16 --duration "$duration" --json 2>/dev/null
"$bin" bench enroll --concurrency 2000 --channels 16 --duration "$duration" --json 2>/dev/null

echo "== 10,000 idle feed streams"
"$bin" bench idle-streams --streams 10000 --hold "$duration" --json 2>/dev/null

echo "== a full disk (SQLite on a tmpfs; needs root to mount)"
cargo test -q -p lianyu-identity --test it disk_full -- --nocapture 2>&1 | grep -E "test result|skipped|panicked" || true

echo "== a database outage (PostgreSQL behind a proxy that cuts every connection)"
pgdir=$(mktemp -d /tmp/lianyu-rel-pg.XXXXXX)
trap 'scripts/postgres.sh stop "$pgdir" >/dev/null 2>&1 || true' EXIT
LIANYU_TEST_POSTGRES_URL=$(scripts/postgres.sh start "$pgdir" 2>/dev/null)
export LIANYU_TEST_POSTGRES_URL
LIANYU_TEST_BACKEND=postgres cargo test -q -p lianyu-identity --test it outage -- --nocapture 2>&1 \
  | grep -E "noticed|answered in|again|first read|test result|panicked"
