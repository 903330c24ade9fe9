"""Scorers with hand-made candidates whose scores are known, and their combination."""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest
import torch

from taoflow.scoring import (
    CandidateScorer,
    ScoreResult,
    build_scorer,
    prepare_frame,
    score_candidates,
    vote,
)

TASK = {"name": "chain_sum", "answer": {"kind": "last_number"}}


def make(groups: dict[str, list[str]], **columns) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Candidates + prompts from {prompt_id: [completion, ...]}; extra columns as flat lists."""
    rows = [
        {"prompt_id": pid, "candidate_id": f"{pid}-{i}", "completion": text}
        for pid, texts in groups.items()
        for i, text in enumerate(texts)
    ]
    candidates = pd.DataFrame(rows)
    for name, values in columns.items():
        candidates[name] = values
    prompts = pd.DataFrame(
        {
            "prompt_id": list(groups),
            "messages": [
                [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Q {p}"}]
                for p in groups
            ],
        }
    )
    return candidates, prompts


def run(entry: dict, groups: dict[str, list[str]], **columns) -> pd.DataFrame:
    candidates, prompts = make(groups, **columns)
    scored, _ = score_candidates(candidates, prompts, {"scorers": [entry]}, TASK)
    return scored


# --- majority_vote ----------------------------------------------------------------------------


def test_majority_vote_rewards_the_majority_and_records_agreement():
    scored = run(
        {"name": "majority_vote"},
        {"p": ["it is 7", "3 + 4 = 7", "8", "no idea"], "q": ["1,000", "1000.0", "999"]},
    )
    assert scored["score_majority_vote"].tolist() == [1, 1, 0, 0, 1, 1, 0]
    assert scored["answer"].tolist() == ["7", "7", "8", None, "1000", "1000", "999"]
    assert scored["agreement"].tolist() == pytest.approx([0.5] * 4 + [2 / 3] * 3)
    assert scored["majority_vote_majority_answer"].tolist() == ["7"] * 4 + ["1000"] * 3


@pytest.mark.parametrize(
    ("ties", "expected"),
    [("none", [0, 0, 0, 0]), ("all", [1, 1, 1, 1]), ("first", [1, 0, 1, 0])],
)
def test_majority_vote_tie_policies(ties, expected):
    scored = run({"name": "majority_vote", "ties": ties}, {"p": ["5", "6", "5", "6"]})
    assert scored["score_majority_vote"].tolist() == expected
    assert scored["majority_vote_tied"].all()
    assert scored["agreement"].tolist() == [0.5] * 4  # recorded whatever the policy


def test_majority_vote_without_answers_or_below_min_agreement_gives_no_label():
    scored = run({"name": "majority_vote"}, {"p": ["none", "at", "all"]})
    assert scored["score_majority_vote"].tolist() == [0, 0, 0]
    assert scored["agreement"].tolist() == [0, 0, 0]
    assert scored["zero_signal"].all()
    weak = run(
        {"name": "majority_vote", "min_agreement": 0.6, "no_answer_value": -1},
        {"p": ["1", "1", "2", "x"]},
    )
    assert weak["score_majority_vote"].tolist() == [0, 0, 0, -1]  # 2/4 < 0.6: no pseudo-label


def test_vote_counts_unanswered_candidates_in_the_group_size():
    result = vote(["3", None, "3", None, "4"])
    assert result.majority == "3" and result.top_count == 2 and result.n_answered == 3
    assert result.agreement == pytest.approx(0.4)
    with pytest.raises(ValueError, match="ties"):
        vote(["1"], ties="random")


@pytest.mark.parametrize(
    ("completion", "answer"),
    [
        ("so the result is -12", "-12"),
        ("−5", "-5"),  # unicode minus
        ("total 2.50", "2.5"),
        ("about 1,234,567 people", "1234567"),
        ("3 + 4 = 7, then 7 * 2 = 14", "14"),
        ("no number here", None),
        ("", None),
        ("5.", "5"),
    ],
)
def test_answer_extraction_edge_cases(completion, answer):
    scored = run({"name": "majority_vote"}, {"p": [completion]})
    assert scored["answer"].iloc[0] == answer
    assert scored["score_majority_vote"].iloc[0] == (1.0 if answer is not None else 0.0)


def test_majority_vote_uses_its_own_extractor_when_given():
    scored = run(
        {"name": "majority_vote", "answer": {"kind": "boxed"}},
        {"p": [r"1 then \boxed{42}", r"\boxed{42.0} 9", "42"]},
    )
    assert scored["score_majority_vote"].tolist() == [1, 1, 0]


# --- format / length_penalty ------------------------------------------------------------------


def test_format_scorer_penalises_missing_answers_and_truncation():
    scored = run(
        {"name": "format"},
        {"p": ["7", "seven", "7 and more", "and on and on"]},
        finish_reason=["stop", "stop", "length", "length"],
    )
    assert scored["score_format"].tolist() == [1.0, 0.5, 0.5, 0.0]
    only_pattern = run(
        {"name": "format", "require_answer": False, "penalize_truncation": False, "pattern": "^A"},
        {"p": ["A: 1", "B"]},
    )
    assert only_pattern["score_format"].tolist() == [1.0, 0.0]


def test_length_penalty_is_linear_between_target_and_max():
    scored = run(
        {"name": "length_penalty", "target_tokens": 10, "max_tokens": 30},
        {"p": ["1", "2", "3", "4", "rambling"]},
        n_tokens=[5, 20, 30, 100, 30],
        finish_reason=["stop", "stop", "stop", "stop", "length"],
    )
    assert scored["score_length_penalty"].tolist() == pytest.approx([0, -0.5, -1, -1, -1])


# --- combination ------------------------------------------------------------------------------


def test_reward_is_the_weighted_sum_and_advantage_is_group_normalised():
    candidates, prompts = make(
        {"a": ["7", "7", "8", "x"], "b": ["1", "1"]},
        finish_reason=["stop", "stop", "stop", "length", "stop", "stop"],
    )
    config = {
        "scorers": [
            {"name": "majority_vote", "weight": 1.0},
            {"name": "fmt", "type": "format", "weight": 0.5},
        ],
        "advantage": {"normalize_std": True, "eps": 0.0},
    }
    scored, summary = score_candidates(candidates, prompts, config, TASK)
    reward = np.array([1.5, 1.5, 0.5, 0.0, 1.5, 1.5])
    assert scored["reward"].to_numpy() == pytest.approx(reward)
    group = reward[:4]
    expected = (group - group.mean()) / group.std(ddof=1)
    assert scored["advantage"].to_numpy()[:4] == pytest.approx(expected)
    assert scored["advantage"].to_numpy()[4:] == pytest.approx([0, 0])
    assert scored["zero_signal"].tolist() == [False] * 4 + [True] * 2
    assert summary["zero_signal_share"] == 0.5
    assert summary["fmt.mean"] == pytest.approx(np.mean([1, 1, 1, 0, 1, 1]))
    assert summary["majority_vote.failures"] == 0
    centred = score_candidates(
        candidates, prompts, dict(config, advantage={"normalize_std": False}), TASK
    )[0]
    assert centred["advantage"].to_numpy()[:4] == pytest.approx(group - group.mean())


def test_groups_come_out_contiguous_and_candidate_columns_survive():
    candidates, prompts = make({"a": ["1", "2"], "b": ["3"]}, strategy=["s", "t", "s"])
    candidates = candidates.iloc[[0, 2, 1]]  # interleaved groups
    scored, _ = score_candidates(candidates, prompts, {"scorers": [{"name": "format"}]}, TASK)
    assert scored["candidate_id"].tolist() == ["a-0", "a-1", "b-0"]
    assert scored["strategy"].tolist() == ["s", "t", "s"]
    assert "messages" not in scored and "prompt" not in scored


def test_bad_input_is_a_clear_error():
    candidates, prompts = make({"a": ["1", "2"]})
    config = {"scorers": [{"name": "format"}]}
    with pytest.raises(ValueError, match="completion"):
        score_candidates(candidates.drop(columns="completion"), prompts, config, TASK)
    with pytest.raises(ValueError, match="absent from prompts in rows a-0, a-1"):
        score_candidates(candidates, prompts.iloc[:0], config, TASK)
    with pytest.raises(ValueError, match="repeat 'candidate_id' in rows a-0"):
        score_candidates(pd.concat([candidates, candidates.iloc[:1]]), prompts, config, TASK)
    with pytest.raises(ValueError, match="duplicate scorer names"):
        score_candidates(candidates, prompts, {"scorers": [{"name": "format"}] * 2}, TASK)
    with pytest.raises(ValueError, match="unknown type 'nope'"):
        score_candidates(candidates, prompts, {"scorers": [{"name": "x", "type": "nope"}]}, TASK)
    with pytest.raises(ValueError, match="no 'scorers'"):
        score_candidates(candidates, prompts, {}, TASK)


# --- custom scorers by Python path ------------------------------------------------------------


@pytest.fixture()
def user_module(tmp_path, monkeypatch):
    """A user's own module, importable by name (also in spawned verifier workers)."""
    (tmp_path / "tao_user_plugins.py").write_text(
        textwrap.dedent(
            """
            import os, time

            class LongerIsBetter:
                def __init__(self, per_char, task):
                    self.per_char, self.task = per_char, task

                def score(self, frame):
                    return [self.per_char * len(t) for t in frame["completion"]]

            def shouting(frame, bonus=1.0):
                return [bonus if t.isupper() else 0.0 for t in frame["completion"]]

            def verify(prompt, completion):
                if completion == "sleep":
                    time.sleep(60)
                if completion == "raise":
                    raise RuntimeError("user code broke")
                if completion == "crash":
                    os._exit(3)
                if completion == "nan":
                    return float("nan")
                return len(completion) + len(prompt) / 100
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    # an earlier test's copy stays in sys.modules, and find_spec would point workers at its
    # folder, removed once that test passed
    sys.modules.pop("tao_user_plugins", None)
    yield "tao_user_plugins"
    sys.modules.pop("tao_user_plugins", None)


def test_custom_scorer_class_and_function_by_python_path(user_module):
    candidates, prompts = make({"p": ["ab", "ABC"]})
    config = {
        "scorers": [
            {"name": "longer", "type": f"{user_module}:LongerIsBetter", "per_char": 0.5},
            {"name": "loud", "type": f"{user_module}:shouting", "bonus": 2.0, "weight": 0.25},
        ]
    }
    scored, _ = score_candidates(candidates, prompts, config, TASK)
    assert scored["score_longer"].tolist() == [1.0, 1.5]
    assert scored["score_loud"].tolist() == [0.0, 2.0]
    assert scored["reward"].tolist() == [1.0, 2.0]
    with pytest.raises(ImportError, match="no attribute"):
        build_scorer({"name": "x", "type": f"{user_module}:Missing"}, TASK)


def test_a_plugin_returning_the_wrong_number_of_scores_is_named():
    class Broken:
        def score(self, frame):
            return ScoreResult(scores=[1.0])

    candidates, prompts = make({"p": ["1", "2"]})
    scorer = CandidateScorer({"scorers": [{"name": "format"}]}, TASK)
    scorer.scorers[0].scorer = Broken()
    with pytest.raises(ValueError, match="'format' returned 1 scores for 2"):
        scorer.score(candidates, prompts)


# --- verifier ---------------------------------------------------------------------------------

# The sandbox itself is tested in test_verifier_sandbox.py; here it runs where it can.
SANDBOX = "bwrap" if shutil.which("bwrap") else "none"


def test_verifier_survives_timeouts_crashes_and_exceptions(user_module):
    candidates, prompts = make({"p": ["ok", "sleep", "raise", "crash", "nan", "fine!"]})
    config = {
        "scorers": [
            {
                "name": "verifier",
                "function": f"{user_module}:verify",
                "timeout_s": 1.5,
                "workers": 2,
                "failure_value": -1.0,
                "sandbox": SANDBOX,
            }
        ]
    }
    scored, summary = score_candidates(candidates, prompts, config, TASK)
    assert scored["score_verifier"].tolist() == pytest.approx([2.03, -1, -1, -1, -1, 5.03])
    assert scored["failed_verifier"].tolist() == [False, True, True, True, True, False]
    assert summary["verifier.failures"] == 4
    assert summary["verifier.timeouts"] == 1
    assert summary["verifier.crashes"] == 1
    assert summary["verifier.errors"] == 2


def test_verifier_that_cannot_be_imported_is_a_configuration_error(user_module):
    candidates, prompts = make({"p": ["1"]})
    config = {
        "scorers": [{"name": "verifier", "function": f"{user_module}:nope", "sandbox": SANDBOX}]
    }
    with pytest.raises(ImportError, match="cannot be loaded"):
        score_candidates(candidates, prompts, config, TASK)


# --- llm_judge --------------------------------------------------------------------------------


@pytest.fixture()
def judge_server():
    """An OpenAI-compatible fake judge on 127.0.0.1 that grades by the completion's text."""
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
            text = body["messages"][-1]["content"]
            if "BOOM" in text:
                self.send_response(500)
                self.end_headers()
                return
            reply = "Score: 8" if "good" in text else "Score: 3/10" if "bad" in text else "hmm"
            payload = json.dumps({"choices": [{"message": {"content": reply}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    server.shutdown()
    server.server_close()


def test_llm_judge_over_http_parses_scores_and_counts_failures(judge_server):
    url, seen = judge_server
    candidates, prompts = make({"p": ["a good answer", "a bad answer", "rambling", "BOOM"]})
    config = {
        "scorers": [
            {"name": "judge", "type": "llm_judge", "url": url, "model": "m", "retries": 0},
        ]
    }
    credentials = {"judge": {"api_key": "sk-test"}}
    scored, summary = score_candidates(candidates, prompts, config, TASK, credentials)
    assert scored["score_judge"].tolist() == pytest.approx([7 / 9, 2 / 9, 0.0, 0.0])
    assert scored["failed_judge"].tolist() == [False, False, True, True]
    assert summary["judge.unparseable"] == 1 and summary["judge.request_errors"] == 1
    assert {s["auth"] for s in seen} == {"Bearer sk-test"}
    assert {s["path"] for s in seen} == {"/v1/chat/completions"}
    assert all(s["temperature"] == 0 and s["model"] == "m" for s in seen)
    assert "Q p" in seen[0]["messages"][-1]["content"]  # the prompt is in the rubric


def test_llm_judge_with_a_local_transformers_model(tiny_model_dir):
    candidates, prompts = make({"p": ["1", "2"]})
    config = {
        "scorers": [
            {
                "name": "judge",
                "type": "llm_judge",
                "backend": "transformers",
                "model": str(tiny_model_dir),
                "max_new_tokens": 4,
                "score_pattern": r"(\d+)",
                "min_score": 0,
                "max_score": 1e9,
                "failure_value": -1.0,
            }
        ]
    }
    scored, summary = score_candidates(candidates, prompts, config, TASK)
    # A random model's reply is arbitrary: either parsed into [0, 1] or a counted failure.
    failed = scored["failed_judge"].to_numpy()
    assert (scored.loc[failed, "score_judge"] == -1).all()
    assert scored.loc[~failed, "score_judge"].between(0, 1).all()
    assert summary["judge.failures"] == failed.sum()
    assert scored["judge_reply"].map(type).eq(str).all()


# --- semantic_consensus -----------------------------------------------------------------------


def test_semantic_consensus_rewards_the_medoid():
    scorer = build_scorer({"name": "semantic_consensus"}, TASK)
    candidates, prompts = make(
        {
            "p": [
                "The capital of France is Paris.",
                "Paris is France's capital city.",
                "I like to eat bananas for breakfast.",
            ],
            "solo": ["Only one candidate."],
        }
    )
    result = scorer.score(prepare_frame(candidates, prompts))
    scores = np.asarray(result.scores)
    assert scores[2] < min(scores[0], scores[1])  # the odd one out
    embedded = scorer.embed(candidates["completion"].tolist()[:3])
    assert scores[0] == pytest.approx((embedded[0] @ embedded[1] + embedded[0] @ embedded[2]) / 2)
    assert scores[3] == 0.0  # singleton: no one to agree with


# --- reward_model -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_reward_model(tmp_path_factory):
    """A randomly initialised 1-label Llama classifier with the tiny ChatML tokenizer."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from taoflow.testing import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    path = tmp_path_factory.mktemp("rm") / "reward-model"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_reward_model_scores_the_chat_and_is_batch_invariant(tiny_reward_model):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    candidates, prompts = make({"p": ["7", "a much longer answer of 12"], "q": ["3 + 4 = 7"]})
    frame = prepare_frame(candidates, prompts)
    one = build_scorer({"name": "rm", "type": "reward_model", "model": str(tiny_reward_model)}, {})
    batched = build_scorer(
        {"name": "rm", "type": "reward_model", "model": str(tiny_reward_model), "batch_size": 1},
        {},
    )
    scores = np.asarray(one.score(frame).scores)
    assert scores == pytest.approx(np.asarray(batched.score(frame).scores), abs=1e-5)
    assert len(set(np.round(scores, 6))) == 3  # different chats, different scores

    tokenizer = AutoTokenizer.from_pretrained(tiny_reward_model)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_reward_model).eval()
    chat = [*frame["messages"][1], {"role": "assistant", "content": frame["completion"][1]}]
    ids = tokenizer.apply_chat_template(chat, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        expected = model(**ids).logits[0, 0].item()
    assert scores[1] == pytest.approx(expected, abs=1e-5)
