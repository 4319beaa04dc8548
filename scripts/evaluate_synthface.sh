#!/usr/bin/env bash
# Reproduce the synthface acceptance measurements (results/synthface_acceptance.md).
# Run from the repository root after `make setup`; about 35 minutes on 2 CPU cores.
set -euo pipefail
export HF_HUB_OFFLINE=1
FB=.venv/bin/fairbench
PY=.venv/bin/python
OUT=runs/acceptance
mkdir -p "$OUT"
rm -rf runs/vanilla-synthface-occupations

echo "== default run (no flag but the method)"
start=$(date +%s)
$FB run --method vanilla > "$OUT/default.log" 2>&1
echo "default run wall time: $(( $(date +%s) - start )) s"
tail -12 "$OUT/default.log"

echo "== all 153 occupations x 40 images"
$FB run --method vanilla --split all --n 40 --no-progress --out "$OUT/all153" > "$OUT/all153.log" 2>&1
echo "== explicit prompts: 20 test occupations x (2 gender + 4 skin-tone groups) x 10 images"
$FB run --method vanilla --suite explicit --n 10 --no-progress --out "$OUT/explicit" > "$OUT/explicit.log" 2>&1
$PY scripts/synthface_check.py "$OUT/all153" "$OUT/explicit"

echo "== classifier on held-out renders (the world's skew, then uniform groups in every occupation)"
$FB synthface evaluate-classifier --dir fairbench/synthface/assets

echo "== generation cost"
$PY benchmarks/bench_generation.py --model synthface --prompts 8 --n 16 --repeats 2

echo "== sample grid"
$FB synthface grid --out docs/synthface_grid.png
