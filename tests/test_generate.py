"""The generation engine and the ``generate`` pipeline, on the tiny fixture model."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from taoflow.config.base import ParameterError, validate_block
from taoflow.config.generate import GenerateParams
from taoflow.config.shared import TaskParams
from taoflow.core.ids import stable_hash
from taoflow.datasets import ResumablePartitionedDataset
from taoflow.generation import (
    frame_conversation,
    generate_completions,
    plan_batches,
    render_prompts,
    stop_token_ids,
)
from taoflow.models import Policy
from taoflow.pipelines.generate.nodes import (
    CANDIDATE_COLUMNS,
    allocate_candidates,
    collect_candidates,
    generate_candidates,
)
from taoflow.testing import eos_leaning_policy

CONVERSATIONS = [
    [{"role": "user", "content": f"What is {a} + {b}?"}] for a, b in [(1, 2), (3, 4), (5, 6)]
] + [
    [
        {"role": "system", "content": "Answer with the final number only."},
        {"role": "user", "content": "Compute 12 - 5 + 8 step by step, then answer."},
    ]
]
TASK = TaskParams(system_prompt="Answer with the final number only.")


@pytest.fixture(scope="module")
def eager_stop_policy(tiny_policy) -> Policy:
    """The tiny model with a bias towards its EOS token, so completions end both ways."""
    return eos_leaning_policy(tiny_policy, 4.0)


def _prompts(n: int, holdout: int = 0) -> pd.DataFrame:
    rows = []
    for k in range(n + holdout):
        messages = [{"role": "user", "content": f"What is {k % 10} + {k // 10}?"}]
        rows.append(
            {
                "prompt_id": stable_hash(messages),
                "messages": messages,
                "source": "test",
                "split": "train" if k < n else "holdout",
                "meta": "{}",
            }
        )
    return pd.DataFrame(rows)


def _config(**overrides) -> GenerateParams:
    config = {
        "backend": "transformers",
        "num_candidates": 3,
        "shard_size": 2,
        "token_budget": 256,
        "strategies": {"direct": {"weight": 1.0, "temperature": 0.8, "max_new_tokens": 6}},
    }
    config.update(overrides)
    return GenerateParams.model_validate(config)


def test_sampling_is_deterministic_and_independent_of_batching(tiny_policy):
    kwargs = {"num_return_sequences": 3, "temperature": 0.9, "top_p": 0.95, "max_new_tokens": 8}
    first = generate_completions(tiny_policy, CONVERSATIONS, seed=7, **kwargs)
    again = generate_completions(tiny_policy, CONVERSATIONS, seed=7, **kwargs)
    assert first == again
    assert [len(samples) for samples in first] == [3, 3, 3, 3]
    # One row per batch instead of everything in one: same tokens, log-probs up to float noise.
    rebatched = generate_completions(tiny_policy, CONVERSATIONS, seed=7, token_budget=1, **kwargs)
    for a, b in zip(sum(first, []), sum(rebatched, []), strict=True):
        assert a["token_ids"] == b["token_ids"] and a["seed"] == b["seed"]
        assert a["logprob"] == pytest.approx(b["logprob"], abs=1e-3)
    # Decoding in 2-step chunks, dropping finished rows in between, changes nothing either.
    chunked = generate_completions(tiny_policy, CONVERSATIONS, seed=7, chunk_tokens=2, **kwargs)
    assert [s["token_ids"] for s in sum(chunked, [])] == [s["token_ids"] for s in sum(first, [])]
    other = generate_completions(tiny_policy, CONVERSATIONS, seed=8, **kwargs)
    assert [s["token_ids"] for s in sum(other, [])] != [s["token_ids"] for s in sum(first, [])]
    # Samples of one prompt differ from each other (own seeds), greedy repeats itself.
    assert len({tuple(s["token_ids"]) for s in first[0]}) > 1
    greedy = generate_completions(
        tiny_policy, CONVERSATIONS, num_return_sequences=2, do_sample=False, max_new_tokens=8
    )
    assert all(a["token_ids"] == b["token_ids"] for a, b in greedy)


def test_top_k_one_sampling_is_greedy(eager_stop_policy):
    greedy = generate_completions(
        eager_stop_policy, CONVERSATIONS, do_sample=False, max_new_tokens=8
    )
    top1 = generate_completions(
        eager_stop_policy, CONVERSATIONS, temperature=1.3, top_k=1, max_new_tokens=8, chunk_tokens=3
    )
    assert [s[0]["token_ids"] for s in top1] == [s[0]["token_ids"] for s in greedy]


def test_logprob_matches_teacher_forced_forward_pass(eager_stop_policy):
    policy = eager_stop_policy
    results = generate_completions(
        policy, CONVERSATIONS, num_return_sequences=4, temperature=1.0, max_new_tokens=10, seed=3
    )
    prompts = render_prompts(policy, CONVERSATIONS)
    stops = set(stop_token_ids(policy))
    reasons = set()
    for prompt, samples in zip(prompts, results, strict=True):
        for sample in samples:
            ids = sample["token_ids"]
            assert sample["n_tokens"] == len(ids) > 0
            reasons.add(sample["finish_reason"])
            if sample["finish_reason"] == "stop":
                assert ids[-1] in stops and not stops & set(ids[:-1])
            else:
                assert len(ids) == 10 and not stops & set(ids)
            assert "<|im_end|>" not in sample["completion"]
            full = torch.tensor([prompt + ids])
            with torch.inference_mode():
                logits = policy.model(full).logits[0, len(prompt) - 1 : -1]
            expected = torch.log_softmax(logits.double(), -1).gather(1, torch.tensor(ids)[:, None])
            assert abs(sample["logprob"] - expected.sum().item()) <= 1e-3 * len(ids)
    assert reasons == {"stop", "length"}  # both branches were exercised


def test_batches_respect_token_budget_and_sort_by_length():
    lengths = [5, 30, 8, 12, 30, 7]
    batches = plan_batches(lengths, max_new_tokens=10, token_budget=60)
    assert sorted(sum(batches, [])) == list(range(len(lengths)))
    flat = [lengths[r] for r in sum(batches, [])]
    assert flat == sorted(flat)
    for batch in batches:
        assert len(batch) == 1 or len(batch) * (max(lengths[r] for r in batch) + 10) <= 60


def test_frame_conversation_applies_strategy_variants():
    user = [{"role": "user", "content": "2 + 2?"}]
    assert frame_conversation(user, default_system="Be brief.")[0] == {
        "role": "system",
        "content": "Be brief.",
    }
    assert frame_conversation(CONVERSATIONS[3], default_system="other")[0]["content"].startswith(
        "Answer with"
    )
    framed = frame_conversation(CONVERSATIONS[3], system_prompt="Think.", instruction="Go.")
    assert [m["role"] for m in framed] == ["system", "user"]
    assert framed[0]["content"] == "Think." and framed[1]["content"].endswith("\n\nGo.")
    assert CONVERSATIONS[3][1]["content"].endswith("answer.")  # input untouched


def test_strategy_allocation_follows_weights():
    allocation = allocate_candidates(50, 8, [0.7, 0.2, 0.1])
    assert all(sum(row) == 8 and min(row) >= 0 for row in allocation)
    totals = [sum(col) for col in zip(*allocation, strict=True)]
    for total, weight in zip(totals, [0.7, 0.2, 0.1], strict=True):
        assert abs(total - weight * 400) <= 1
    assert allocate_candidates(50, 8, [0.7, 0.2, 0.1]) == allocation
    assert allocate_candidates(3, 4, [1, 0]) == [[4, 0]] * 3


def test_node_spreads_candidates_across_strategies(tiny_policy):
    config = _config(
        num_candidates=4,
        shard_size=3,
        strategies={
            "direct": {"weight": 3, "temperature": 0.8, "max_new_tokens": 4},
            "greedy": {"weight": 1, "temperature": 0.0, "max_new_tokens": 4},
            "reason": {
                "weight": 0,
                "temperature": 1.0,
                "system_prompt": "Think step by step.",
            },
        },
    )
    shards = generate_candidates(_prompts(5, holdout=2), tiny_policy, config, 42, TASK)
    assert len(shards) == 2 and list(shards) == sorted(shards)
    candidates, metrics = collect_candidates(shards)
    assert list(candidates.columns) == CANDIDATE_COLUMNS
    assert candidates["prompt_id"].nunique() == 5  # holdout prompts are not used
    assert candidates.groupby("prompt_id").size().eq(4).all()
    assert candidates["strategy"].value_counts().to_dict() == {"direct": 15, "greedy": 5}
    assert candidates["candidate_id"].is_unique
    assert set(candidates.loc[candidates.strategy == "greedy", "temperature"]) == {0.0}
    assert (candidates["round"] == 1).all()
    assert metrics["generate.candidates"] == {"value": 20.0, "step": 1}
    assert metrics["generate.direct.finish_length"]["value"] + metrics[
        "generate.direct.finish_stop"
    ]["value"] == pytest.approx(15)
    assert metrics["generate.tokens"]["value"] == candidates["n_tokens"].sum()


def test_resume_after_interruption_gives_identical_dataset(tiny_policy, tmp_path):
    prompts, config = _prompts(6), _config()

    def dataset(name: str) -> ResumablePartitionedDataset:
        return ResumablePartitionedDataset(
            path=str(tmp_path / name), dataset="pandas.ParquetDataset"
        )

    reference = dataset("clean")
    reference.save(generate_candidates(prompts, tiny_policy, config, 42, TASK))
    expected, _ = collect_candidates(reference.load())

    calls: list[str] = []

    def instrumented(fail_after: int | None):
        shards = generate_candidates(prompts, tiny_policy, config, 42, TASK)

        def wrap(shard_id, job):
            def run():
                if fail_after is not None and len(calls) == fail_after:
                    raise KeyboardInterrupt("killed mid-run")
                calls.append(shard_id)
                return job()

            return run

        return {shard_id: wrap(shard_id, job) for shard_id, job in shards.items()}

    interrupted = dataset("resumed")
    with pytest.raises(KeyboardInterrupt):
        interrupted.save(instrumented(fail_after=2))
    assert len(calls) == 2
    interrupted.save(instrumented(fail_after=None))
    assert len(calls) == 3 and len(set(calls)) == 3  # finished shards were not recomputed
    resumed, _ = collect_candidates(interrupted.load())
    pd.testing.assert_frame_equal(resumed, expected)

    # A changed configuration gets new shard ids: nothing stale is reused.
    changed = generate_candidates(prompts, tiny_policy, _config(num_candidates=2), 42, TASK)
    assert not set(changed) & set(calls)


def test_prompts_without_train_rows_are_a_clear_error(tiny_policy):
    with pytest.raises(ValueError, match="no rows with split == 'train'"):
        generate_candidates(_prompts(0, holdout=3), tiny_policy, _config(), 42, TASK)
    with pytest.raises(ValueError, match="no rows with split == 'train'"):
        generate_candidates(_prompts(2).iloc[:0], tiny_policy, _config(), 42, TASK)
    bad = _prompts(2)
    bad.at[1, "messages"] = [{"content": "no role"}]
    with pytest.raises(ValueError, match=r"prompts row 1 .*field 'messages'"):
        generate_candidates(bad, tiny_policy, _config(), 42, TASK)
    with pytest.raises(ParameterError, match=r"generate.strategies.direct.temperature"):
        validate_block("generate", {"strategies": {"direct": {"weight": 1}}})


def test_vllm_backend_is_optional_and_fails_clearly(tiny_policy):
    pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("GPU present: the vLLM path is exercised by the GPU check instead")
    with pytest.raises(RuntimeError, match="vllm"):
        generate_completions(tiny_policy, CONVERSATIONS[:1], backend="vllm")
    with pytest.raises(ValueError, match="backend"):
        generate_completions(tiny_policy, CONVERSATIONS[:1], backend="nope")


def test_generate_pipeline_runs_through_kedro_session(kedro_project):
    import mlflow
    from kedro.framework.session import KedroSession

    prompts_path = kedro_project / "data" / "03_primary" / "test_prompts.parquet"
    prompts_path.parent.mkdir(parents=True, exist_ok=True)
    _prompts(3, holdout=1).to_parquet(prompts_path)
    (kedro_project / "conf" / "local" / "catalog.yml").write_text(
        json.dumps({"prompts": {"type": "pandas.ParquetDataset", "filepath": str(prompts_path)}})
    )
    runtime_params = {
        "model": {"name_or_path": "tiny-random"},
        "generate": _config(num_candidates=2).model_dump(),
    }
    with KedroSession.create(project_path=kedro_project, runtime_params=runtime_params) as session:
        session.run(pipeline_names=["generate"])
    candidates = pd.read_parquet(kedro_project / "data/03_primary/round_1/candidates.parquet")
    assert list(candidates.columns) == CANDIDATE_COLUMNS
    assert len(candidates) == 6 and (candidates["round"] == 1).all()
    shards = kedro_project / "data/02_intermediate/round_1/candidate_shards"
    assert len(list(shards.glob("*.parquet"))) == 2
    run = mlflow.search_runs(experiment_names=["taoflow"], output_format="list")[0]
    assert run.data.metrics["generate.candidates"] == 6
    assert run.data.metrics["generate.tokens_per_s"] > 0
