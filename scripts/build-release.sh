#!/usr/bin/env bash
# Builds the four service binaries exactly as the Dockerfile's build stage does (it runs this
# script), into target/release/ — and CI runs it too, so a change that breaks the image's
# build breaks CI. `--locked`: the image is built from Cargo.lock, never a newer dependency.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked \
  -p lianyu-identity -p lianyu-entitlements -p lianyu-live -p lianyu-comarketing "$@"
for service in identity entitlements live comarketing; do
  test -x "target/release/lianyu-$service"
done
echo "release binaries: $(cd target/release && ls lianyu-identity lianyu-entitlements lianyu-live lianyu-comarketing | tr '\n' ' ')"
