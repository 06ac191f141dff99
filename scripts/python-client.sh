#!/usr/bin/env bash
# Runs the Python partner-client test (tests/python) against a freshly built `lianyu up`, then
# the sweep: every RPC called with no token, an empty request and garbage requests as each kind
# of caller (SWEEP_ROUNDS garbage requests per caller and RPC, 3 by default). With grpcio from
# PyPI in a local virtualenv. Needs Python 3.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv
if ! "$venv/bin/python" -c "import grpc, grpc_reflection, grpc_status" 2>/dev/null; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    grpcio==1.85.1 grpcio-reflection==1.85.1 grpcio-status==1.85.1 \
    protobuf==7.36.2 googleapis-common-protos==1.76.0
fi
cargo build --locked -p lianyu --bin lianyu
"$venv/bin/python" tests/python/partner_client.py "${CARGO_TARGET_DIR:-target}/debug/lianyu"
"$venv/bin/python" tests/python/sweep.py "${CARGO_TARGET_DIR:-target}/debug/lianyu" "${SWEEP_ROUNDS:-3}"
