"""``generate.decode``: the engine's own decoding loops against ``model.generate`` per chunk."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from taoflow.config.generate import GenerateParams
from taoflow.config.shared import TaskParams
from taoflow.core.ids import stable_hash
from taoflow.generation import generate_completions
from taoflow.models import Policy
from taoflow.pipelines.generate.nodes import generate_candidates
from taoflow.testing import eos_leaning_policy

# Prompts of different lengths (left padding inside a batch) and a repeated one (shared prefill).
CONVERSATIONS = [
    [{"role": "user", "content": f"What is {a} + {b}?" * (1 + a % 3)}]
    for a, b in [(1, 2), (3, 4), (5, 6), (7, 8)]
] + [[{"role": "user", "content": "What is 1 + 2?"}]]


@pytest.fixture(scope="module")
def stopping_policy(tiny_policy) -> Policy:
    """The tiny model leaning towards EOS, so rows stop at different steps (compaction runs)."""
    return eos_leaning_policy(tiny_policy, 3.0)


def _run(policy, decode, streamed=None, **overrides):
    kwargs = {
        "num_return_sequences": 3,
        "temperature": 0.9,
        "top_p": 0.95,
        "max_new_tokens": 9,
        "seed": 11,
        "token_budget": 120,
        "chunk_tokens": 2,
        "decode": decode,
    }
    kwargs.update(overrides)
    if streamed is not None:
        kwargs["on_token"] = lambda i, j, t: streamed.setdefault((i, j), []).append(t)
    return generate_completions(policy, CONVERSATIONS, **kwargs)


def _ids(results):
    return [s["token_ids"] for s in sum(results, [])]


@pytest.mark.parametrize("do_sample", [True, False])
def test_steps_loop_is_bit_identical_to_generate(stopping_policy, do_sample):
    streamed_generate, streamed_steps = {}, {}
    reference = _run(stopping_policy, "generate", streamed_generate, do_sample=do_sample)
    steps = _run(stopping_policy, "steps", streamed_steps, do_sample=do_sample)
    assert steps == reference  # token ids, texts, finish reasons, seeds and log-probs, exactly
    assert streamed_steps == streamed_generate
    if do_sample:  # both endings, so finished rows were dropped from the batch mid-way
        assert {s["finish_reason"] for s in sum(reference, [])} == {"stop", "length"}


def test_static_cache_keeps_tokens_and_logprobs_up_to_float_noise(stopping_policy, tiny_policy):
    for policy in (stopping_policy, tiny_policy):
        for do_sample in (True, False):
            reference = _run(policy, "generate", do_sample=do_sample)
            static = _run(policy, "static", do_sample=do_sample)
            assert _ids(static) == _ids(reference)
            for a, b in zip(sum(static, []), sum(reference, []), strict=True):
                assert a["seed"] == b["seed"] and a["finish_reason"] == b["finish_reason"]
                assert a["logprob"] == pytest.approx(b["logprob"], abs=1e-4)
            # reproducible: the same seeds give the same samples again
            assert _run(policy, "static", do_sample=do_sample) == static


def test_unknown_decode_mode_is_refused(tiny_policy):
    with pytest.raises(ValueError, match="decode mode"):
        _run(tiny_policy, "turbo")


def test_node_keys_shards_by_decode_only_when_not_the_default(tiny_policy):
    prompts = _prompts()
    config = {
        "num_candidates": 2,
        "shard_size": 2,
        "token_budget": 256,
        "strategies": {"direct": {"weight": 1.0, "temperature": 0.8, "max_new_tokens": 5}},
    }
    task = TaskParams(system_prompt="Answer.")
    default = generate_candidates(prompts, tiny_policy, GenerateParams(**config), 3, task)
    explicit = GenerateParams(**config, decode="generate")
    assert list(generate_candidates(prompts, tiny_policy, explicit, 3, task)) == list(default)
    steps = generate_candidates(
        prompts, tiny_policy, GenerateParams(**config, decode="steps"), 3, task
    )
    assert set(steps).isdisjoint(default)
    for (_, job_a), (_, job_b) in zip(default.items(), steps.items(), strict=True):
        a, b = (job().drop(columns=["shard_id", "shard_seconds"]) for job in (job_a, job_b))
        pd.testing.assert_frame_equal(a, b)  # same candidates, ids, log-probs: bit for bit


def _prompts() -> pd.DataFrame:
    rows = []
    for k in range(3):
        messages = [{"role": "user", "content": f"What is {k} + {k + 2}?"}]
        rows.append(
            {
                "prompt_id": stable_hash(messages),
                "messages": messages,
                "source": "test",
                "split": "train",
                "meta": "{}",
            }
        )
    return pd.DataFrame(rows)


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("TAOFLOW_CHECK_COMPILE") != "1", reason="make check-compile (compiles C++)"
)
def test_compiled_step_keeps_greedy_tokens(stopping_policy):
    """torch.compile of the decoding step (C++ toolchain; the compilation takes a while)."""
    kwargs = {"do_sample": False, "max_new_tokens": 5, "token_budget": 10_000, "chunk_tokens": 8}
    reference = _run(stopping_policy, "generate", **kwargs)
    compiled = _run(stopping_policy, "compiled", **kwargs)
    assert _ids(compiled) == _ids(reference)
    for a, b in zip(sum(compiled, []), sum(reference, []), strict=True):
        assert a["logprob"] == pytest.approx(b["logprob"], abs=1e-4)
