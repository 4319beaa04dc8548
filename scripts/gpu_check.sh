#!/usr/bin/env bash
# GPU check: every method through `fairbench run` on CUDA: the seven that need no CLIP on a tiny random SD
# pipeline, and all of them on the embedded world synthface
# (real diffusers pipeline, MTCNN and the age/gender classifier as for SD), float16 too,
# and vanilla's CUDA images against the same run on the CPU.
#   usage: scripts/gpu_check.sh [OUT=runs/gpu-check]   (needs a CUDA device; about 3 minutes)
set -uo pipefail
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
OUT=${1:-runs/gpu-check}
FB=${FB:-fairbench}
mkdir -p "$OUT"
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__, torch.cuda.get_device_name(0))" || exit 1
$FB make-tiny-sd "$OUT/tiny-sd" > /dev/null || exit 1
COMMON=(--model "$OUT/tiny-sd" --n 4 --limit 3 --steps 4 --no-progress --n-boot 100)
status=0
# check NAME LABEL ARGS...: one `fairbench run` into $OUT/NAME, its time or its log's tail
check() {
  local name=$1 label=$2 t0; shift 2; t0=$(date +%s%N)
  if $FB run "$@" --out "$OUT/$name" > "$OUT/$name.log" 2>&1; then
    printf '%-28s %-16s ok   %6d ms\n' "$name" "$label" $(( ($(date +%s%N) - t0) / 1000000 ))
  else
    printf '%-28s %-16s FAILED (%s)\n' "$name" "$label" "$OUT/$name.log"; tail -5 "$OUT/$name.log"; status=1
  fi
}
for m in vanilla fairmap entigen hardprompt debiasvl fairdiffusion uce; do
  check "$m-cuda" "cuda float32" --method "$m" "${COMMON[@]}" --device cuda
done
$FB run --method vanilla "${COMMON[@]}" --device cuda --dtype float16 --out "$OUT/vanilla-cuda-fp16" \
  > "$OUT/vanilla-cuda-fp16.log" 2>&1 && echo "vanilla        cuda float16 ok" || { echo "vanilla float16 FAILED"; tail -5 "$OUT/vanilla-cuda-fp16.log"; status=1; }
$FB run --method vanilla "${COMMON[@]}" --device cpu --out "$OUT/vanilla-cpu" > "$OUT/vanilla-cpu.log" 2>&1 \
  || { echo "vanilla cpu FAILED"; tail -5 "$OUT/vanilla-cpu.log"; status=1; }
# every method on the embedded world on CUDA (its own CLIP, synthclip, serves the methods that need one),
# training-based methods at token sizes: this checks that each one runs on the device, not what it achieves
declare -A ARGS=(
  [itigen]="--method-arg epochs=1 --method-arg steps_per_epoch=2 --method-arg reference_per_group=4"
  [fairqueue]="--method-arg epochs=1 --method-arg steps_per_epoch=2 --method-arg reference_per_group=4"
  [balancingact]="--method-arg train_images=1 --method-arg head_epochs=2"
  [selfdebias]="--method-arg train_images=1 --method-arg epochs=1 --method-arg k_max=2"
  [finetune]="--method-arg max_steps=2 --method-arg images_per_prompt=4 --method-arg batch=2"
  [uce]="--method-arg max_iterations=1 --method-arg images_per_concept=2 --method-arg concepts_split=test"
)
WORLD=(--model synthface --n 4 --limit 2 --no-progress --n-boot 100 --device cuda --no-baseline)
for m in vanilla fairmap entigen hardprompt debiasvl fairdiffusion uce fairimagen itigen fairqueue balancingact \
         selfdebias finetune; do
  # shellcheck disable=SC2086
  check "$m-world-cuda" "synthface cuda" --method "$m" ${ARGS[$m]:-} "${WORLD[@]}"
done
python3 - "$OUT" <<'EOF' || status=1
import json, sys
from pathlib import Path
import numpy as np
from PIL import Image
out = Path(sys.argv[1])
def images(run):
    return {p.relative_to(out / run): np.asarray(Image.open(p), dtype=np.int16) for p in sorted((out / run).glob("images/*/*.png"))}
cpu = images("vanilla-cpu")
for run in ("vanilla-cuda", "vanilla-cuda-fp16"):
    gpu = images(run)
    assert gpu.keys() == cpu.keys() and cpu, f"{run}: different image sets"
    diff = np.stack([np.abs(gpu[k] - cpu[k]) for k in cpu])
    print(f"{run} vs vanilla-cpu: {len(cpu)} images, max |pixel diff| {diff.max()}, mean {diff.mean():.3f} (0..255)")
for run in sorted(p.name for p in out.glob("*-cuda*") if p.is_dir() and (p / "run.json").is_file()):
    rec = json.loads((out / run / "run.json").read_text())
    print(f"{run}: status {rec['status']}, {rec['model']['device']} {rec['model']['dtype']} on {rec['hardware'].get('gpu')}, "
          f"{rec['generation']['images_per_second']} images/s")
EOF
exit $status
