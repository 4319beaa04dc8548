#!/usr/bin/env bash
# Reproduce the Fair Mapping (reconstruction) measurements on synthface's held-out test occupations.
# Run after scripts/evaluate_synthface.sh (it reuses runs/acceptance/explicit as the vanilla explicit run).
set -euo pipefail
export HF_HUB_OFFLINE=1
FB=.venv/bin/fairbench
PY=.venv/bin/python
OUT=runs/fairmap
ARGS=(--method-arg checkpoint=$OUT/checkpoint)
mkdir -p "$OUT"

echo "== training (gender + skin tone, all 122 training occupations)"
start=$(date +%s)
$FB train --method fairmap --model synthface --method-arg attributes=gender,skin_tone --out "$OUT/checkpoint"
echo "train command wall time (model load included): $(( $(date +%s) - start )) s"

echo "== vanilla and fairmap, test split, 40 images per occupation"
$FB run --method vanilla --split test --n 40 --no-progress --out "$OUT/vanilla-test" > "$OUT/vanilla.log" 2>&1
$FB run --method fairmap "${ARGS[@]}" --split test --n 40 --no-progress --reference "$OUT/vanilla-test" \
    --out "$OUT/fairmap-test" > "$OUT/fairmap.log" 2>&1
echo "== explicit prompts, detector on / off"
$FB run --method fairmap "${ARGS[@]}" --suite explicit --n 10 --no-progress --out "$OUT/explicit-on" > /dev/null 2>&1
$FB run --method fairmap "${ARGS[@]}" --method-arg detector=false --suite explicit --n 10 --no-progress \
    --out "$OUT/explicit-off" > /dev/null 2>&1
$PY scripts/fairmap_compare.py "$OUT/vanilla-test" "$OUT/fairmap-test" "$OUT/explicit-on" "$OUT/explicit-off" \
    runs/acceptance/explicit
$FB report "$OUT/fairmap-test" --baseline "$OUT/vanilla-test"

echo "== training-time benchmark"
$PY benchmarks/bench_fairmap.py
