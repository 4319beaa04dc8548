#!/usr/bin/env bash
# Fair Mapping (reconstruction) acceptance numbers on synthface's held-out test occupations.
# Reuses the leaderboard runs (make leaderboard): vanilla-test, fairmap-test (gender +
# skin tone, 40 images per occupation, FD to vanilla), and the explicit-prompt runs (detector on).
set -euo pipefail
export HF_HUB_OFFLINE=1
FB=${FB:-.venv/bin/fairbench}
PY=${PY:-.venv/bin/python}
LB=runs/leaderboard
OUT=runs/fairmap
NE=${1:-5}
mkdir -p "$OUT"

echo "== training time: gender + skin tone, all training occupations (model load included)"
start=$(date +%s.%N)
$FB train --method fairmap --model synthface --method-arg attributes=gender,skin_tone --out "$OUT/checkpoint"
echo "train command wall time: $(echo "$(date +%s.%N) - $start" | bc) s"

echo "== explicit prompts with the keyword detector off"
$FB run --method fairmap --method-arg attributes=gender,skin_tone --method-arg detector=false --suite explicit \
    --n "$NE" --no-progress --no-baseline --out "$OUT/explicit-off" > "$OUT/explicit-off.log" 2>&1
echo "== paired comparisons with vanilla: test occupations; explicit prompts, detector on and off"
$FB compare "$LB/fairmap-test" --baseline "$LB/vanilla-test"
$FB compare "$LB/fairmap-explicit" --baseline "$LB/vanilla-explicit"
$FB compare "$OUT/explicit-off" --baseline "$LB/vanilla-explicit"
$FB report "$LB/fairmap-test" --baseline "$LB/vanilla-test"

echo "== training-time benchmark (synthface and an SD-1.5-sized random text encoder)"
$PY benchmarks/bench_fairmap.py
