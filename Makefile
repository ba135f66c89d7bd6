# gptlab -- `make help` lists the targets.
# TORCH picks the PyTorch build installed first (see README, "Installing: CPU or CUDA torch").
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
TORCH_INDEX ?=
BIN    := $(VENV)/bin
ARGS   ?=

.DEFAULT_GOAL := help
.PHONY: help install prepare train sample report test test-all test-gpu lint tensorboard clean bench bench-gpu gpu-experiments gpu-carry

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'
	@echo "  (pass overrides with ARGS=\"max_iters=500 learning_rate=5e-3\")"

$(BIN)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/.installed ## create .venv and install gptlab with the chosen torch build

prepare: install ## prepare Tiny Shakespeare, char-level (ARGS="data=shakespeare" for BPE)
	$(BIN)/python -m gptlab.prepare $(ARGS)

train: install ## train the default model (CPU recipe without a GPU) and print a sample
	$(BIN)/python -m gptlab.train $(ARGS)

sample: install ## sample from a run: make sample ARGS="ckpt=outputs/<date>/<time>"
	$(BIN)/python -m gptlab.sample $(ARGS)

report: install ## a sweep's report.md and plots: make report ARGS=outputs/exp2_grad_accum (default: the newest sweep in outputs/)
	$(BIN)/python -m gptlab.report $(ARGS)

test: install ## run the tests, without the slow ones and the GPU ones (what CI runs)
	$(BIN)/python -m pytest -q -m "not slow and not gpu" $(ARGS)

test-all: install ## run every test, slow ones included (GPU ones skip without CUDA)
	$(BIN)/python -m pytest -q $(ARGS)

test-gpu: install ## the tests marked gpu (bf16/fp16, compile, packing, FSDP, resume, bench on CUDA; ~3 min on one H200)
	$(BIN)/python -m pytest -q -rs -m gpu $(ARGS)

lint: install ## ruff (lint + format check) and the import layers (lint-imports, contracts in pyproject.toml)
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts
	$(BIN)/lint-imports

bench: install ## gptlab vs a plain PyTorch loop, side by side (ARGS="--configs cpu --rounds 5"); see README, Performance
	$(BIN)/python -m gptlab.bench $(ARGS)

bench-gpu: ## the GPU measurements (baby GPT 5000 steps, GPT-2 124M MFU): scripts/bench_gpu.sh
	bash scripts/bench_gpu.sh $(ARGS)

gpu-experiments: ## exp1-exp5 at the guide's numbers on one GPU, jobs side by side: scripts/gpu_experiments.sh
	bash scripts/gpu_experiments.sh $(ARGS)

gpu-carry: install ## fill .gpucarry/ with what an offline GPU machine lacks (hydra-core, omegaconf, data, BPE files)
	$(BIN)/python scripts/gpu_carry.py

tensorboard: install ## serve TensorBoard over outputs/
	$(BIN)/tensorboard --logdir outputs

clean: ## remove outputs and prepared data (keeps .venv)
	rm -rf outputs/* data/*
