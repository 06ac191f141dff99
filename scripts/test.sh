#!/usr/bin/env bash
# The test suite: every crate's unit, gRPC and mesh-level tests.
# Runs on embedded SQLite by default; LIANYU_TEST_BACKEND=postgres with LIANYU_TEST_POSTGRES_URL
# runs the same tests against PostgreSQL (scripts/postgres.sh starts a throwaway server).
set -euo pipefail
cd "$(dirname "$0")/.."
# Each test starts servers with database pools of their own; on a many-core machine an
# unbounded number of tests at once would exhaust PostgreSQL's connections (and the CPU the
# overload tests measure against). At most four at a time, fewer on a smaller machine.
threads=$(nproc 2>/dev/null || echo 2)
if [ "$threads" -gt 4 ]; then threads=4; fi
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-$threads}"
exec cargo test --workspace --locked "$@"
