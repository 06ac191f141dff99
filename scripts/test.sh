#!/usr/bin/env bash
# The test suite: every crate's unit, gRPC and mesh-level tests.
# Runs on embedded SQLite by default; LIANYU_TEST_BACKEND=postgres with LIANYU_TEST_POSTGRES_URL
# runs the same tests against PostgreSQL (scripts/postgres.sh starts a throwaway server).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --workspace --locked "$@"
