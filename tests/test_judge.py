"""The judge stage and the ``judge`` scorer: mechanics on the tiny random model (its answers are
noise), a fake OpenAI-compatible endpoint on 127.0.0.1, and the pipeline through KedroSession."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from taoflow.config.base import validate_block
from taoflow.config.judge import JudgeParams
from taoflow.config.shared import TaskParams
from taoflow.datasets import ResumablePartitionedDataset
from taoflow.pipelines.judge.nodes import (
    collect_judge_references,
    collect_judgements,
    content_chunks,
    judge_reference_shards,
    judge_verdict_shards,
)
from taoflow.scoring import score_candidates
from taoflow.scoring.judge_http import parse_verdict
from taoflow.scoring.judge_model import (
    REFERENCE_COLUMNS,
    VERDICT_COLUMNS,
    majority_answer,
    verdict_chat,
    verdict_probabilities,
)
from taoflow.scoring.judge_runner import judge_reference

TASK = TaskParams(name="t", system_prompt="Answer with the final number only.")
SCORE_TASK = {"name": "t", "answer": {"kind": "last_number"}}


def prompts_frame(questions: list[str], split: str = "train") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "prompt_id": [f"p{i:02d}" for i in range(len(questions))],
            "messages": [[{"role": "user", "content": q}] for q in questions],
            "split": split,
        }
    )


QUESTIONS = [f"What is {a} + {b}?" for a, b in [(1, 2), (3, 4), (5, 1), (2, 2), (7, 1), (6, 3)]]


def judge_params(model: str, **overrides) -> JudgeParams:
    base = {"enabled": True, "model": model, "max_new_tokens": 6, "shard_size": 2}
    return validate_block("judge", {**base, **overrides})


def run_shards(shards: dict) -> dict:
    """What ResumablePartitionedDataset.save then load would hand the collect node."""
    frames = {key: job() for key, job in shards.items()}
    return {key: (lambda f=f: f) for key, f in frames.items()}


@pytest.fixture(scope="module")
def tiny_ref(tiny_model_dir) -> dict:
    return judge_reference(judge_params(str(tiny_model_dir)))


# --- reference mode ---------------------------------------------------------------------------


def test_majority_answer_keeps_the_most_common_answer_and_its_share():
    answer, share, completion = majority_answer(
        ["so 3", "2", "x", "it is 3.0"], {"kind": "last_number"}
    )
    assert (answer, share, completion) == ("3", 0.5, "so 3")
    assert majority_answer(["none", "here"], {"kind": "last_number"}) == (None, 0.0, "none")


def test_reference_greedy_answers_each_unique_prompt_once(tiny_model_dir, tiny_ref):
    prompts = pd.concat(
        [prompts_frame(QUESTIONS), prompts_frame(QUESTIONS[:2], split="holdout")],
        ignore_index=True,
    )  # p00/p01 twice: judged once each
    params = judge_params(str(tiny_model_dir))
    shards = judge_reference_shards(
        prompts=prompts, judge_model=tiny_ref, judge=params, task=TASK, seed=1, credentials=None
    )
    frame, metrics = collect_judge_references(run_shards(shards))
    assert list(frame.columns) == REFERENCE_COLUMNS
    assert frame["prompt_id"].tolist() == sorted(set(prompts["prompt_id"]))
    assert set(frame["mode"]) == {"reference"} and set(frame["n_samples"]) == {1}
    assert set(frame["judge"]) == {str(tiny_model_dir)}
    answered = frame["judge_answer"].notna()
    assert (frame.loc[answered, "judge_confidence"] == 1.0).all()  # greedy: one vote
    assert (frame.loc[~answered, "judge_confidence"] == 0.0).all()
    assert metrics["judge.reference.prompts"]["value"] == len(QUESTIONS)
    again, _ = collect_judge_references(
        run_shards(
            judge_reference_shards(
                prompts=prompts,
                judge_model=tiny_ref,
                judge=params,
                task=TASK,
                seed=1,
                credentials=None,
            )
        )
    )
    pd.testing.assert_frame_equal(frame, again)


def test_reference_with_k_samples_keeps_the_majority_and_its_vote_share(tiny_model_dir, tiny_ref):
    params = judge_params(str(tiny_model_dir), samples=4, temperature=1.0, max_new_tokens=4)
    prompts = prompts_frame(QUESTIONS)
    shards = judge_reference_shards(
        prompts=prompts, judge_model=tiny_ref, judge=params, task=TASK, seed=3, credentials=None
    )
    frame, _ = collect_judge_references(run_shards(shards))
    assert set(frame["n_samples"]) == {4}
    assert set(frame["judge_confidence"]) <= {0.0, 0.25, 0.5, 0.75, 1.0}
    greedy = judge_reference_shards(
        prompts=prompts,
        judge_model=tiny_ref,
        judge=judge_params(str(tiny_model_dir)),
        task=TASK,
        seed=3,
        credentials=None,
    )
    assert not set(greedy) & set(shards)  # other settings: other shards, never reused


def test_content_chunks_change_locally_when_a_key_is_added():
    keys = [f"k{i:03d}" for i in range(200)]
    before = {tuple(keys[i] for i in c) for c in content_chunks(keys, 8)}
    more = sorted([*keys, "k050x"])
    after = {tuple(more[i] for i in c) for c in content_chunks(more, 8)}
    assert len(before - after) == 1 and len(after - before) == 1
    assert [i for c in content_chunks(keys, 8) for i in c] == list(range(200))


# --- verdict mode -----------------------------------------------------------------------------


def _chats(n: int) -> list[list[dict]]:
    return [
        verdict_chat(
            q,
            str(i),
            template="Q: {prompt} A: {answer}. {correct} or {incorrect}?",
            system=None,
            correct="correct",
            incorrect="incorrect",
        )
        for i, q in enumerate((QUESTIONS * 3)[:n])
    ]


def test_verdict_probabilities_come_from_one_forward_pass_and_batching_changes_nothing(
    tiny_policy,
):
    chats = _chats(7)
    calls = []
    handle = tiny_policy.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        batched = verdict_probabilities(
            tiny_policy, chats, correct="correct", incorrect="incorrect", token_budget=10**6
        )
    finally:
        handle.remove()
    assert len(calls) == 1  # one batched forward pass, no generation
    alone = np.array(
        [
            verdict_probabilities(
                tiny_policy, [c], correct="correct", incorrect="incorrect", token_budget=10**6
            )[0]
            for c in chats
        ]
    )
    assert ((batched > 0) & (batched < 1)).all()
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    assert len(set(np.round(batched, 6))) > 1  # different pairs, different probabilities


def candidates_frame(groups: dict[str, list[str]]) -> pd.DataFrame:
    rows = [
        {"prompt_id": pid, "candidate_id": f"{pid}-{i}", "completion": c, "round": 1}
        for pid, texts in groups.items()
        for i, c in enumerate(texts)
    ]
    return pd.DataFrame(rows)


def test_verdicts_judge_each_unique_prompt_answer_pair_once(tiny_model_dir, tiny_ref):
    prompts = prompts_frame(QUESTIONS[:3])
    candidates = candidates_frame(
        {"p00": ["3", "it is 3", "3.0", "4", "none"], "p01": ["7", "7"], "p02": ["x"]}
    )
    params = judge_params(str(tiny_model_dir), mode="verdict")
    shards = judge_verdict_shards(
        candidates=candidates,
        prompts=prompts,
        judge_model=tiny_ref,
        judge=params,
        task=TASK,
        credentials=None,
    )
    frame, metrics = collect_judgements(run_shards(shards), candidates)
    assert list(frame.columns) == VERDICT_COLUMNS
    assert list(zip(frame["prompt_id"], frame["answer"], strict=True)) == [
        ("p00", "3"),
        ("p00", "4"),
        ("p01", "7"),
    ]
    assert frame["score"].between(0, 1).all() and set(frame["mode"]) == {"verdict"}
    assert set(frame["judge_answer"]) <= {"correct", "incorrect"}
    assert metrics["judge.verdict.pairs"] == {"value": 3.0, "step": 1}


# --- resume -----------------------------------------------------------------------------------


def test_reference_shards_resume_after_a_kill_with_identical_results(
    tmp_path, tiny_model_dir, tiny_ref
):
    params = judge_params(str(tiny_model_dir))
    prompts = prompts_frame(QUESTIONS)
    dataset = ResumablePartitionedDataset(
        path=str(tmp_path / "shards"), dataset="pandas.ParquetDataset"
    )

    def plan(counter: list[str]) -> dict:
        shards = judge_reference_shards(
            prompts=prompts,
            judge_model=tiny_ref,
            judge=params,
            task=TASK,
            seed=1,
            credentials=None,
        )
        return {k: (lambda k=k, job=job: counter.append(k) or job()) for k, job in shards.items()}

    first_calls: list[str] = []
    dataset.save(plan(first_calls))
    first, _ = collect_judge_references(dataset.load())
    assert len(first_calls) >= 2
    files = sorted((tmp_path / "shards").glob("*.parquet"))
    files[0].unlink()  # killed before this shard was renamed into place ...
    (tmp_path / "shards" / (files[1].name + ".partial")).write_text("half")  # ... mid-write
    calls: list[str] = []
    dataset.save(plan(calls))
    assert calls == [files[0].stem]  # only the missing shard is judged again
    second, _ = collect_judge_references(dataset.load())
    pd.testing.assert_frame_equal(first, second)


# --- http backend -----------------------------------------------------------------------------


@pytest.fixture()
def judge_endpoint():
    """Fake OpenAI-compatible judge: answers '<a+b>' to sums, grades '3' correct with logprobs
    when they are asked for by 'What is 1 + 2?', and in plain text otherwise."""
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"auth": self.headers.get("Authorization"), **body})
            text = body["messages"][-1]["content"]
            choice: dict = {"message": {"content": "hmm"}}
            a, b = (int(x) for x in text.split("is ")[1].split("?")[0].split(" + "))
            if "Proposed final answer" in text:
                right = f"answer: {a + b}\n" in text
                if "1 + 2" in text and body.get("logprobs"):
                    top = [
                        {"token": "correct", "logprob": float(np.log(0.8 if right else 0.1))},
                        {"token": "incorrect", "logprob": float(np.log(0.2 if right else 0.9))},
                    ]
                    choice["logprobs"] = {
                        "content": [{"token": "x", "logprob": 0, "top_logprobs": top}]
                    }
                elif "2 + 2" not in text:
                    choice["message"]["content"] = "Correct." if right else "Incorrect"
            else:
                choice["message"]["content"] = f"{a + b}"
            payload = json.dumps({"choices": [choice]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    server.shutdown()
    server.server_close()


def http_params(url: str, **overrides) -> JudgeParams:
    http = {"url": url, "model": "big-judge", "retries": 0, "credentials_key": "judge"}
    return judge_params("unused", backend="http", http=http, **overrides)


def test_http_reference_and_verdict_modes(judge_endpoint):
    url, seen = judge_endpoint
    params = http_params(url, samples=3, temperature=0.5)
    ref = judge_reference(params)
    credentials = {"judge": {"api_key": "sk-test"}}
    prompts = prompts_frame(QUESTIONS[:4])
    frame, _ = collect_judge_references(
        run_shards(
            judge_reference_shards(
                prompts=prompts,
                judge_model=ref,
                judge=params,
                task=TASK,
                seed=0,
                credentials=credentials,
            )
        )
    )
    assert frame["judge_answer"].tolist() == ["3", "7", "6", "4"]
    assert set(frame["judge_confidence"]) == {1.0} and set(frame["judge"]) == {"big-judge"}
    assert len(seen) == 12 and {s["auth"] for s in seen} == {"Bearer sk-test"}
    assert {s["temperature"] for s in seen} == {0.5} and len({s["seed"] for s in seen}) == 12
    seen.clear()
    candidates = candidates_frame({"p00": ["3", "4"], "p01": ["7", "8"], "p03": ["4"]})
    verdicts, metrics = collect_judgements(
        run_shards(
            judge_verdict_shards(
                candidates=candidates,
                prompts=prompts,
                judge_model=ref,
                judge=http_params(url, mode="verdict"),
                task=TASK,
                credentials=credentials,
            )
        ),
        candidates,
    )
    scores = dict(
        zip(
            zip(verdicts["prompt_id"], verdicts["answer"], strict=True),
            verdicts["score"],
            strict=True,
        )
    )
    assert scores[("p00", "3")] == pytest.approx(0.8)  # from logprobs
    assert scores[("p00", "4")] == pytest.approx(0.1 / 1.0)
    assert (scores[("p01", "7")], scores[("p01", "8")]) == (1.0, 0.0)  # from the reply text
    assert np.isnan(scores[("p03", "4")]) and metrics["judge.verdict.unparsed"]["value"] == 1
    assert all(s["logprobs"] is True and s["temperature"] == 0 for s in seen)


def test_parse_verdict_reads_labels_and_logprobs():
    reply = {"choices": [{"message": {"content": "That is incorrect."}}]}
    assert parse_verdict(reply, "correct", "incorrect") == 0.0
    assert parse_verdict(None, "correct", "incorrect") is None


# --- the scorer -------------------------------------------------------------------------------


def _score(groups: dict[str, list[str]], references: pd.DataFrame | None, **entry):
    candidates = candidates_frame(groups)
    prompts = prompts_frame(QUESTIONS[: len(groups)])
    config = {"scorers": [{"name": "judge", "type": "judge", **entry}]}
    return score_candidates(candidates, prompts, config, SCORE_TASK, references=references)


def test_judge_scorer_rewards_agreement_with_the_reference_answer():
    references = pd.DataFrame(
        {
            "prompt_id": ["p00", "p01"],
            "judge": "j",
            "mode": "reference",
            "judge_answer": ["3", None],
            "judge_confidence": [0.75, 0.0],
            "n_samples": 4,
            "completion": ["3", "?"],
        }
    )
    scored, summary = _score({"p00": ["so 3", "3.0", "4"], "p01": ["7"]}, references)
    assert scored["score_judge"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert scored["failed_judge"].tolist() == [False, False, False, True]
    assert scored["judge_answer"].fillna("-").tolist() == ["3", "3", "3", "-"]
    assert scored["judge_confidence"].tolist() == [0.75, 0.75, 0.75, 0.0]
    assert summary["judge.missing"] == 1 and summary["judge.agreement_rate"] == pytest.approx(2 / 3)
    scaled, _ = _score({"p00": ["3", "4"]}, references, scale_by_confidence=True)
    assert scaled["score_judge"].tolist() == [0.75, 0.0]
    none, summary = _score({"p00": ["3"]}, None, missing_value=0.5)
    assert none["score_judge"].tolist() == [0.5] and summary["judge.missing"] == 1


def test_judge_scorer_uses_verdict_probabilities():
    judgements = pd.DataFrame(
        {
            "prompt_id": ["p00", "p00"],
            "answer": ["3", "4"],
            "judge": "j",
            "mode": "verdict",
            "score": [0.9, 0.2],
            "judge_answer": ["correct", "incorrect"],
        }
    )
    scored, _ = _score({"p00": ["3", "it is 4", "5"]}, judgements)
    assert scored["score_judge"].tolist() == [0.9, 0.2, 0.0]
    assert scored["failed_judge"].tolist() == [False, False, True]
    assert scored["judge_answer"].fillna("-").tolist() == ["correct", "incorrect", "-"]


def test_judge_scorer_compares_free_form_answers_by_embedding():
    references = pd.DataFrame(
        {
            "prompt_id": ["p00"],
            "judge": "j",
            "mode": "reference",
            "judge_answer": ["The capital of France is Paris."],
            "judge_confidence": [1.0],
            "n_samples": 1,
            "completion": ["Paris"],
        }
    )
    scored, _ = _score(
        {"p00": ["Paris is the capital of France.", "Bananas are yellow fruit."]},
        references,
        answer={"kind": "full"},
    )
    close, far = scored["score_judge"].tolist()
    assert close > far and -1.0 <= far < close <= 1.0


# --- the pipeline -----------------------------------------------------------------------------


def test_smoke_pipeline_with_the_judge_scores_round_one(kedro_project: Path):
    from kedro.framework.session import KedroSession

    scorers = [
        {"name": "majority_vote", "type": "majority_vote"},
        {"name": "judge", "type": "judge", "weight": 1.0},
    ]
    runtime = {
        "tao": {"rounds": 1},
        "judge": {"enabled": True, "model": "tiny-random", "max_new_tokens": 4},
        "score": {"scorers": scorers},
    }
    with KedroSession.create(project_path=kedro_project, env="smoke", runtime_params=runtime) as s:
        s.run(to_nodes=["round_1.score_candidates"])
    data = kedro_project / "data"
    references = pd.read_parquet(data / "03_primary/judge_references.parquet")
    prompts = pd.read_parquet(data / "03_primary/prompts.parquet")
    assert sorted(references["prompt_id"]) == sorted(prompts["prompt_id"])
    scored = pd.read_parquet(data / "05_model_input/round_1/scored.parquet")
    assert {"score_judge", "judge_answer", "judge_confidence"} <= set(scored.columns)
    expected = scored["prompt_id"].map(references.set_index("prompt_id")["judge_answer"])
    assert scored["judge_answer"].fillna("-").tolist() == expected.fillna("-").tolist()
    assert (
        json.loads((data / "06_models/judge_model.json").read_text())["backend"] == "transformers"
    )


@pytest.mark.parametrize(
    ("block", "value", "message"),
    [
        ("judge", {"prompt": {"corect": "yes"}}, r"'judge.prompt.corect'; did you mean 'correct'"),
        ("judge", {"sampels": 3}, r"'judge.sampels'; did you mean 'samples'"),
        (
            "score",
            {"scorers": [{"type": "judge", "scale_by_confidance": True}]},
            r"scale_by_confidance.*did you mean 'scale_by_confidence'",
        ),
    ],
)
def test_judge_typos_name_the_key_and_the_nearest_valid_one(block, value, message):
    from taoflow.config.base import ParameterError

    with pytest.raises(ParameterError, match=message):
        validate_block(block, value)


def test_http_judge_needs_a_url():
    from taoflow.config.base import ParameterError

    with pytest.raises(ParameterError, match="judge.http.url"):
        validate_block("judge", {"enabled": True, "backend": "http"})
