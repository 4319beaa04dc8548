#!/usr/bin/env bash
# Reproduce an embedded world's acceptance measurements (results/synthface_acceptance.md, docs/worlds.md).
# Usage: scripts/evaluate_synthface.sh [synthface|synthface-vl] [OUT]
# Run from the repository root after `make setup`; about 40 minutes on 2 CPU cores.
set -euo pipefail
export HF_HUB_OFFLINE=1
MODEL=${1:-synthface}
OUT=${2:-runs/acceptance-$MODEL}
FB=.venv/bin/fairbench
PY=.venv/bin/python
mkdir -p "$OUT"

echo "== default run of this world (no flag but the method and the model)"
rm -rf "$OUT/default"
start=$(date +%s)
$FB run --method vanilla --model "$MODEL" --out "$OUT/default" > "$OUT/default.log" 2>&1
echo "default run wall time: $(( $(date +%s) - start )) s"
tail -12 "$OUT/default.log"

echo "== all 153 occupations x 40 images"
$FB run --method vanilla --model "$MODEL" --split all --n 40 --no-progress --out "$OUT/all153" > "$OUT/all153.log" 2>&1
echo "== explicit prompts: 20 test occupations x (2 gender + 4 skin-tone groups) x 10 images"
$FB run --method vanilla --model "$MODEL" --suite explicit --n 10 --no-progress --out "$OUT/explicit" > "$OUT/explicit.log" 2>&1
$PY scripts/synthface_check.py "$OUT/all153" "$OUT/explicit"
echo "== emotion descriptors: 12 prompts x 20 images (expression adherence)"
$FB run --method vanilla --model "$MODEL" --suite emotions --n 20 --no-progress --out "$OUT/emotions" > "$OUT/emotions.log" 2>&1
$PY scripts/synthface_check.py --adherence-only "$OUT/emotions"

echo "== classifier on held-out renders (the world's skew, then uniform groups in every occupation)"
$FB synthface evaluate-classifier --dir fairbench/synthface/assets

echo "== generation cost"
$PY benchmarks/bench_generation.py --model "$MODEL" --prompts 8 --n 16 --repeats 2
