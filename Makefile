# fairbench: `make run` sets up and runs the main job; `make test` sets up and runs the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test regression bench synthface synthface-vl leaderboard clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt -r requirements-dev.txt
	# facenet-pytorch declares torch<2.3 / numpy<2; its MTCNN runs fine on the pinned torch.
	$(BIN)/pip install -q --no-deps facenet-pytorch==2.6.0
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

# Main job: Fair Mapping on the embedded default world (synthface-vl), offline on a CPU.
run: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/fairbench run --method fairmap

# -n auto: one pytest worker per core, each on one thread (tests/conftest.py)
test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n auto
	$(MAKE) regression

# A small run on the default world (in a temporary folder) checked, image by image, against the committed reference.
regression: $(STAMP)
	@out=$$(mktemp -d) && trap 'rm -rf "$$out"' EXIT && \
	HF_HUB_OFFLINE=1 FAIRBENCH_CACHE="$$out/cache" $(BIN)/fairbench run --method vanilla --n 8 --limit 12 --dtype float32 \
		--no-progress --out "$$out/ci-regression" > "$$out/run.log" 2>&1 || { cat "$$out/run.log"; exit 1; } && \
	$(BIN)/fairbench check "$$out/ci-regression" --against results/ci_reference.json

# Rebuild the synthface world from scratch (denoiser about 86 minutes on 2 CPU cores, then the classifier; every stage resumes).
SF = HF_HUB_OFFLINE=1 $(BIN)/python -m lab.synthface
synthface: $(STAMP)
	$(SF) train --out .cache/synthface-train --steps 3600
	mkdir -p .cache/synthface-text
	cp .cache/synthface-train/renders.npz .cache/synthface-train/captions.safetensors .cache/synthface-text/
	$(SF) train --out .cache/synthface-text --steps 1000 --init-from .cache/synthface-train/final/unet \
		--neutral-share 0.2 --lr 2e-4 --transformer-layers 3 --text-lr-scale 10 --timestep-power 0.5 --fresh-named
	$(SF) train-classifier --out .cache/synthface-classifier
	$(SF) install --model-dir .cache/synthface-text/final --classifier-dir .cache/synthface-classifier

# Rebuild the vision-language world; every stage resumes. (1) The classifier's expression head. (2) synthclip,
# its image tower seeded by that head's body, so the text side learns the expression words. (3) synthclip's
# second stage: the text encoder locked (bit-identical token states); the image tower starts again as the
# classifier's two bodies side by side, and the text pooler and both projections train. (4) The denoiser on
# the (unchanged) token states, from the text-only world's weights, then three continuations (5, 6, 7) that
# train it longer: 6 with more captions naming the expression, 7 also with timesteps drawn uniformly
# (--timestep-power 1 instead of 0.5), so the low-noise steps that draw mouths and brows are trained
# as often as the rest. See
# fairbench/synthface/assets_vl/MODEL_CARD.md for the measured time.
VL_DENOISER = --text-encoder .cache/synthclip-stage2/final --expressions --neutral-share 0.2 --transformer-layers 3 \
	--text-lr-scale 10 --fresh-named
synthface-vl: $(STAMP)
	test -f .cache/synthface-classifier-expression/classifier.json || \
		$(SF) train-expression-head --out .cache/synthface-classifier-expression
	$(SF) train-clip --out .cache/synthclip-train --steps 1400 --image-init .cache/synthface-classifier-expression
	mkdir -p .cache/synthclip-stage2 .cache/synthface-vl-train
	cp .cache/synthclip-train/renders.npz .cache/synthclip-stage2/
	$(SF) train-clip --out .cache/synthclip-stage2 --steps 800 --warmup 50 --hard-negatives 9 --freeze-text \
		--init-from .cache/synthclip-train/final --image-init .cache/synthface-classifier-expression \
		--image-bodies body,expression_body
	cp .cache/synthclip-train/renders.npz .cache/synthface-vl-train/
	$(SF) train --out .cache/synthface-vl-train --steps 1200 --lr 2e-4 \
		--init-from fairbench/synthface/assets/unet $(VL_DENOISER) --timestep-power 0.5
	for d in .cache/synthface-vl-train2 .cache/synthface-vl-train3 .cache/synthface-vl-train4; do mkdir -p $$d && \
		cp .cache/synthface-vl-train/renders.npz .cache/synthface-vl-train/captions.safetensors $$d/; done
	$(SF) train --out .cache/synthface-vl-train2 --steps 1200 --seed 1 --lr 1e-4 --warmup 100 \
		--init-from .cache/synthface-vl-train/final/unet $(VL_DENOISER) --timestep-power 0.5
	$(SF) train --out .cache/synthface-vl-train3 --steps 2000 --seed 2 --lr 1.5e-4 --warmup 50 --expression-share 0.6 \
		--init-from .cache/synthface-vl-train2/final/unet $(VL_DENOISER) --timestep-power 0.5
	$(SF) train --out .cache/synthface-vl-train4 --steps 1000 --seed 3 --lr 1e-4 --warmup 50 --expression-share 0.6 \
		--init-from .cache/synthface-vl-train3/final/unet $(VL_DENOISER) --timestep-power 1
	$(SF) install --world synthface-vl --model-dir .cache/synthface-vl-train4/final \
		--synthclip-dir .cache/synthclip-stage2/final --classifier-dir .cache/synthface-classifier-expression

# results/leaderboard.csv: vanilla, fairmap and the five baselines on both embedded worlds (synthface and
# synthface-vl), from the plan file prompts/plans/leaderboard.yaml (every run resumes; from scratch about
# 39,000 vanilla-image equivalents, some 2.5 hours on a 2-core CPU generating 4.8 images/s in bfloat16).
leaderboard: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/fairbench plan prompts/plans/leaderboard.yaml --no-progress

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_generation.py

clean:
	rm -rf $(VENV) .cache runs
