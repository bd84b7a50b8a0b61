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

timeout 150 python3 -m pytest -q -m gpu tests/ -p no:cacheprovider 2>&1 | tee "$out/gpu_tests.log" | tail -n 15
tests_rc=${PIPESTATUS[0]}

jsonl="$out/bench_selective_scan.jsonl"
: >"$jsonl"
# Each step has its own time limit (150 + 180 + 100 + 120 s in all, then bench_throughput in
# what is left of 570 s), so the whole suite stays inside one 10-minute device call even when
# a step hangs.
run() {  # run <seconds> <script> <json path>: a benchmark with its own log, never stopping the suite
  local name; name=$(basename "$2" .py)
  echo "== $2"
  timeout "$1" python3 "$2" --json "$3" >"$out/$name.log" 2>&1 \
    || { echo "$2 failed:"; tail -n 20 "$out/$name.log"; }
}
run 180 benchmarks/bench_selective_scan.py "$jsonl"
[ -f benchmarks/bench_gated_cache.py ] && run 100 benchmarks/bench_gated_cache.py "$out/bench_gated_cache.json"
[ -f benchmarks/bench_ltm.py ] && run 120 benchmarks/bench_ltm.py "$out/bench_ltm.json"
# The long-sequence throughput at GPU sizes (d_model 1024), in the time the suite has left
# of its 10 minutes (at most 150 s; the results so far are written after every case).
left=$(( 570 - SECONDS )); [ "$left" -gt 150 ] && left=150
if [ "$left" -ge 30 ]; then
  echo "== benchmarks/bench_throughput.py --gpu (${left} s at most)"
  timeout "$left" python3 benchmarks/bench_throughput.py --gpu --modes infer,train --repeats 1 \
    --max-case-seconds 15 --out "$out/throughput" --no-progress >"$out/bench_throughput.log" 2>&1 \
    || echo "bench_throughput stopped (its ${left} s cap, or a failure): $out/bench_throughput.log"
else
  echo "== bench_throughput skipped: ${left} s left of the suite's time"
fi

echo "== gpu tests exit code: $tests_rc"
for name in bench_gated_cache bench_ltm; do
  [ -f "$out/$name.log" ] && { echo "== $name"; tail -n 14 "$out/$name.log"; }
done
[ -f "$out/throughput/throughput.md" ] && { echo "== bench_throughput"; \
  grep -A 12 "^infer: tokens/s" "$out/throughput/throughput.md"; }
echo "== bench_selective_scan"
python3 benchmarks/summarize.py "$jsonl"
