# colbert-lightning: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION := 2.13.0
ARGS ?=

.DEFAULT_GOAL := help

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# The stamp is written only after every step succeeded, so a broken install is retried.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	# torch first and pinned: a looser request pulls a multi-GB CUDA build
	$(BIN)/python -m pip install torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -e '.[test]'
	touch $@

install: $(VENV)/.installed ## Create .venv with pinned torch and the package (editable, test extras)

train: $(VENV)/.installed ## Train the built-in default (random-init ColBERT on Cranfield); ARGS="key=value ..."
	$(BIN)/python -m colbert_lightning.train $(ARGS)

test: $(VENV)/.installed ## Run the test suite (no network, no GPU)
	$(BIN)/python -m pytest $(ARGS)

# One folder per `make sweep`; override with `make sweep SWEEP_DIR=...`.
SWEEP_DIR := outputs/sweeps/cranfield_grid/$(shell date +%Y-%m-%d_%H-%M-%S)

sweep: $(VENV)/.installed ## A 4-job grid (lr x warmup) on Cranfield on CPU, then its summary table and plots
	$(BIN)/python -m colbert_lightning.train hparams_search=cranfield_grid hydra.sweep.dir=$(SWEEP_DIR) $(ARGS)
	$(BIN)/python -m colbert_lightning.summarize $(SWEEP_DIR)

lint: $(VENV)/.installed ## Ruff lint and format check
	$(BIN)/ruff check src tests $(wildcard benchmarks)
	$(BIN)/ruff format --check src tests $(wildcard benchmarks)

parity: $(VENV)/.installed ## Export a model; PyLate 1.2.0 and colbert-ai 0.2.22 (own venv) score 20 pairs; import back
	benchmarks/peers/pylate12/run.sh outputs/parity $(CHECKPOINT)

# CPU benchmarks at sizes that fit 15 minutes on a fresh clone (venvs included); JSON in BENCH_DIR.
BENCH_DIR ?= benchmarks/out

bench: $(VENV)/.installed ## CPU benchmarks: throughput vs PyLate (own venv, set up once), data pipeline, streaming memory, eval cost
	bash benchmarks/peers/pylate16/setup.sh
	$(BIN)/python benchmarks/throughput.py --out $(BENCH_DIR) --pairs 5 --steps 3 --profile-steps 2 \
		--variants fp32 fp32_all bf16 bf16_all bf16_all@32 --e2e default plain bf16 --e2e-steps 12 --e2e-warmup 3
	$(BIN)/python benchmarks/throughput.py --out $(BENCH_DIR) --pairs 5 --steps 3 --profile-steps 2 \
		--lengths msmarco --variants fp32 fp32_all bf16 bf16_all --e2e-steps 0 --name throughput_cpu_msmarco
	$(BIN)/python benchmarks/data_pipeline.py --out $(BENCH_DIR) --batches 40
	$(BIN)/python benchmarks/streaming_memory.py --out $(BENCH_DIR)
	$(BIN)/python benchmarks/eval_cost.py --out $(BENCH_DIR) --repeats 2

clean: ## Remove run outputs (outputs/, multirun/, .cache/); keeps .venv
	rm -rf outputs multirun .cache lightning_logs wandb

.PHONY: help install train test sweep lint clean parity bench
