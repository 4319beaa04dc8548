# fairbench: `make run` sets up and runs the main job; `make test` sets up and runs the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test bench clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt -r requirements-dev.txt
	# facenet-pytorch declares torch<2.3 / numpy<2; its MTCNN runs fine on the pinned torch.
	$(BIN)/pip install -q --no-deps facenet-pytorch==2.6.0
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

# Main job. Until the synthface world lands, it runs vanilla on a tiny random SD pipeline.
run: $(STAMP)
	test -f .cache/tiny-sd/model_index.json || $(BIN)/fairbench make-tiny-sd .cache/tiny-sd
	$(BIN)/fairbench run --method vanilla --model .cache/tiny-sd --n 4 --limit 6 --steps 2 --out runs/quickstart

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_generation.py

clean:
	rm -rf $(VENV) .cache runs
