#!/usr/bin/env bash
# The GPU checks in one go (under 8 minutes on an H100/H200): install, the gpu-marked
# tests, the kernel benchmarks, and a short table printed last.
#   bash benchmarks/gpu_suite.sh [out_dir]        (peers: PYTHONPATH=.peers when present)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-results}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
[ -d .peers ] && export PYTHONPATH="$PWD/.peers${PYTHONPATH:+:$PYTHONPATH}"
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$out/install.log" 2>&1 \
  || { cat "$out/install.log"; exit 1; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.used --format=csv \
  | tee "$out/gpu.txt"

timeout 240 python3 -m pytest -q -m gpu tests/ -p no:cacheprovider 2>&1 | tee "$out/gpu_tests.log" | tail -n 15
tests_rc=${PIPESTATUS[0]}

jsonl="$out/bench_selective_scan.jsonl"
: >"$jsonl"
run() {  # run <script> <json path>: a benchmark with its own log, never stopping the suite
  local name; name=$(basename "$1" .py)
  echo "== $1"
  timeout 300 python3 "$1" --json "$2" >"$out/$name.log" 2>&1 \
    || { echo "$1 failed:"; tail -n 20 "$out/$name.log"; }
}
run benchmarks/bench_selective_scan.py "$jsonl"
[ -f benchmarks/bench_gated_cache.py ] && run benchmarks/bench_gated_cache.py "$out/bench_gated_cache.json"
[ -f benchmarks/bench_ltm.py ] && run benchmarks/bench_ltm.py "$out/bench_ltm.json"

echo "== gpu tests exit code: $tests_rc"
for name in bench_gated_cache bench_ltm; do
  [ -f "$out/$name.log" ] && { echo "== $name"; tail -n 14 "$out/$name.log"; }
done
echo "== bench_selective_scan"
python3 benchmarks/summarize.py "$jsonl"
