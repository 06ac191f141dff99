#!/usr/bin/env bash
# Measures how gRPC load spreads over replicas behind a per-connection load balancer, with the
# servers' max connection age short and long (tests/python/connection_spread.py). Not in CI: a
# measurement, quoted in docs/deploy.md.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv
if ! "$venv/bin/python" -c "import grpc, grpc_health" 2>/dev/null; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check grpcio==1.85.1 grpcio-health-checking==1.85.1
fi
cargo build --locked -q -p lianyu-identity
seconds=${1:-20}
for age in 3s 1h; do
  "$venv/bin/python" tests/python/connection_spread.py "${CARGO_TARGET_DIR:-target}/debug/lianyu-identity" "$age" "$seconds"
done
