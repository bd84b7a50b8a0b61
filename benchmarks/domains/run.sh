#!/bin/sh
# The domain results of docs/results.md: sequential-pixel digits with MemoryClassifier,
# then the ablation runner on each domain's spec (vision, biology, language), one torch
# thread each. Usage: sh benchmarks/domains/run.sh [OUT] [DOMAINS]  (default: results/domains,
# "digits vision biology language"). Needs the domains and plot extras.
set -e
OUT=${1:-results/domains}
DOMAINS=${2:-"digits vision biology language"}
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1
HERE=$(dirname "$0")
for d in $DOMAINS; do
  if [ "$d" = digits ]; then
    $PY -m memmodel.training.classify --out "$OUT/digits" --spec "$HERE/vision.json" \
      --variants ssm,wm,fifo --lrs 1e-3,3e-3 --steps 200 --batch-size 32 --threads 1
  else
    $PY -m memmodel.training.ablation --spec "$HERE/$d.json" --out "$OUT/$d" --threads 1 \
      --no-progress
  fi
done
