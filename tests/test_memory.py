"""Memory release during a run: allocation policy only, so outputs stay bit-identical."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from taoflow import memory

# A child process trains the tiny model (DPO, two steps) and samples from it; with "on" it
# first applies what MemoryReleaseHook does (fixed mmap threshold, release before each part).
CHILD = r"""
import hashlib, json, sys
import pandas as pd, yaml
from taoflow import memory
from taoflow.config.train import TrainParams
from taoflow.generation.engine import generate_completions
from taoflow.models import load_policy
from taoflow.training.trainers import fit_policy

model_dir, out_dir, mode, conf = sys.argv[1:5]
if mode == "on":
    assert memory.fix_mmap_threshold()
    memory.release_freed_memory()
params = yaml.safe_load(open(conf))["train"]
params.update(algorithm="dpo", output_dir=out_dir)
params["trainer"].update(per_device_train_batch_size=4, max_steps=2, max_length=64)
settings = TrainParams.model_validate(params)
prompts = [[{"role": "user", "content": f"What is {i} + {i}?"}] for i in range(8)]
examples = pd.DataFrame(
    {"prompt_id": [f"p{i}" for i in range(8)], "prompt": prompts,
     "chosen": [str(2 * i) for i in range(8)], "rejected": [f"{i} and then some" for i in range(8)]}
)
policy = load_policy(model_dir)
trained, *_ = fit_policy(policy, examples, settings, seed=0, round_=1, data_hashes={"x": "y"})
if mode == "on":
    memory.release_freed_memory()
weights = hashlib.sha256()
for name, tensor in sorted(trained.model.state_dict().items()):
    weights.update(name.encode() + tensor.detach().numpy().tobytes())
samples = generate_completions(trained, prompts, num_return_sequences=3, max_new_tokens=8, seed=1)
print(json.dumps({"weights": weights.hexdigest(), "samples": samples}))
"""


def _child(tiny_model_dir, tmp_path, mode: str) -> dict:
    from tests.conftest import PROJECT_ROOT

    env = {k: v for k, v in os.environ.items() if k != memory.ENV_THRESHOLD}
    conf = PROJECT_ROOT / "conf/base/parameters_train.yml"
    args = [str(tiny_model_dir), str(tmp_path / mode), mode, str(conf)]
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *args], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(memory._libc() is None, reason="glibc only")
def test_memory_release_leaves_trained_weights_and_samples_bit_identical(tiny_model_dir, tmp_path):
    plain = _child(tiny_model_dir, tmp_path, "off")
    released = _child(tiny_model_dir, tmp_path, "on")
    assert plain["weights"] == released["weights"]
    assert plain["samples"] == released["samples"]  # completions, token ids and log-probs


def test_a_user_set_threshold_is_left_alone(monkeypatch):
    monkeypatch.setenv(memory.ENV_THRESHOLD, "65536")
    assert memory.fix_mmap_threshold() is False


def test_the_hook_is_registered_and_release_is_safe_anywhere():
    from taoflow.settings import HOOKS

    assert any(isinstance(h, memory.MemoryReleaseHook) for h in HOOKS)
    assert isinstance(memory.release_freed_memory(), bool)


@pytest.mark.parametrize(
    ("block", "fixed", "trims"),
    [
        ({}, [memory.MMAP_THRESHOLD], 1),
        ({"mmap_threshold": 1 << 20}, [1 << 20], 1),
        ({"release": False}, [], 0),
    ],
)
def test_the_hook_follows_the_memory_block(monkeypatch, block, fixed, trims):
    from taoflow.config import graph
    from taoflow.config.memory import MemoryParams

    calls: dict[str, list] = {"fix": [], "trim": []}
    monkeypatch.setattr(graph, "graph_parameters", lambda: {"memory": MemoryParams(**block)})
    monkeypatch.setattr(memory, "fix_mmap_threshold", lambda t: calls["fix"].append(t) or True)
    monkeypatch.setattr(memory, "release_freed_memory", lambda collect: calls["trim"].append(1))
    hook = memory.MemoryReleaseHook()
    hook.before_pipeline_run({}, None, None)
    hook.before_node_run(None, None, {}, False, "run")
    assert calls["fix"] == fixed
    assert len(calls["trim"]) == trims


def test_a_threshold_outside_glibcs_range_is_refused():
    from pydantic import ValidationError

    from taoflow.config.memory import MemoryParams

    with pytest.raises(ValidationError):
        MemoryParams(mmap_threshold=64 * 1024 * 1024)
