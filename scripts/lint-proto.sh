#!/usr/bin/env bash
# buf lint on the contracts, with the buf CLI from npm installed locally under tools/.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x tools/node_modules/.bin/buf ]; then
  # `npm ci` refuses this lock file under npm 11 (the other platforms' optional buf binaries are
  # not recorded); the version is pinned exactly in package.json, so install is as reproducible.
  npm install --prefix tools --no-audit --no-fund --loglevel=error
fi
tools/node_modules/.bin/buf lint proto
echo "buf lint: proto/ is clean"
