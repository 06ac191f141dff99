#!/usr/bin/env bash
# A scenario against `lianyu up` as it is deployed — JSON logs and tracing on, unlike the
# in-process mesh `lianyu bench` starts by itself — with the server's own CPU time per request
# (`perf stat -e task-clock` on its process). Builds interleaved, a fresh data directory each
# run (BENCHMARKS.md, "Telemetry that cost a tenth of a call"). Not part of CI.
#   scripts/bench-server-cpu.sh ROUNDS BINARY... -- SCENARIO [BENCH OPTIONS]
#   scripts/bench-server-cpu.sh 3 /tmp/lianyu-old /tmp/lianyu-new -- request-contact --members 1000 --duration 6s --warmup 1s
set -euo pipefail
rounds=$1; shift
binaries=()
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do binaries+=("$1"); shift; done
[ "$#" -gt 1 ] || { echo "usage: $0 ROUNDS BINARY... -- SCENARIO [OPTIONS]" >&2; exit 2; }
shift
command -v perf >/dev/null || { echo "needs perf (apt-get install linux-perf)" >&2; exit 2; }
port=${LIANYU_BENCH_PORT:-50081}
for round in $(seq "$rounds"); do
  for bin in "${binaries[@]}"; do
    dir=$(mktemp -d /tmp/lianyu-cpu.XXXXXX)
    # Logs to a file, as a pod's stdout is not a terminal: the JSON log layer is on.
    "$bin" up --listen "127.0.0.1:$port" --data-dir "$dir/data" > "$dir/up.log" 2>&1 &
    pid=$!
    for _ in $(seq 120); do grep -q "demo: done" "$dir/up.log" && break; sleep 1; done
    perf stat -e task-clock -x, -o "$dir/stat" -p "$pid" &
    stat=$!
    "$bin" bench "$@" --address "http://127.0.0.1:$port" --data-dir "$dir/data" --json \
      2>/dev/null > "$dir/out" || true
    kill -INT "$stat"; wait "$stat" 2>/dev/null || true
    kill "$pid"; wait "$pid" 2>/dev/null || true
    python3 - "$dir" "$bin" "$round" <<'PY'
import json, sys
d, binary, round_ = sys.argv[1:]
report = json.loads(open(d + "/out").readline())
calls = report.get("requests") or report.get("buyers") or report.get("claimers")
cpu_ms = float([l for l in open(d + "/stat") if "task-clock" in l][0].split(",")[0])
print(f"{binary} round {round_}: {report['scenario']} {calls} calls,"
      f" {report.get('requests_per_second', 0):.0f}/s, server CPU {cpu_ms:.0f} ms,"
      f" {cpu_ms * 1000 / calls:.1f} µs a call")
PY
    rm -rf "$dir"
  done
done
