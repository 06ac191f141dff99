#!/usr/bin/env bash
# buf lint on the contracts, with the buf CLI from npm installed locally under tools/.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x tools/node_modules/.bin/buf ]; then
  npm ci --prefix tools --no-audit --no-fund --loglevel=error
fi
tools/node_modules/.bin/buf lint proto
echo "buf lint: proto/ is clean"
