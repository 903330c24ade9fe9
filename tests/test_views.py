"""task.views: equivalent rewrites of prompts, the generate view path, the cross_view scorer."""

from __future__ import annotations

import pandas as pd
import pytest

from taoflow.config.base import ParameterError, validate_block
from taoflow.config.generate import GenerateParams, StrategyParams
from taoflow.config.shared import TaskParams, ViewParams
from taoflow.core.ids import stable_hash
from taoflow.generation.views import reorder_terms, rewrite_question, view_conversation
from taoflow.pipelines.generate import nodes as generate_nodes
from taoflow.pipelines.generate.nodes import (
    CANDIDATE_COLUMNS,
    collect_candidates,
    generate_candidates,
    strategy_key,
)
from taoflow.scoring import score_candidates

REORDER = ViewParams(kind="reorder_terms")
TASK = TaskParams(
    system_prompt="Answer with the final number only.",
    views={
        "reorder": {"kind": "reorder_terms"},
        "ask": {"kind": "template", "template": "Question: {question}\nReply with a number."},
    },
)
CHAIN = "State the final answer to the following arithmetic problem: 9 - 8 + 7 ="


# ---------------------------------------------------------------- rewrites (pure)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (CHAIN, "State the final answer to the following arithmetic problem: 7 - 8 + 9 ="),
        ("What is -3 + 5 - 2?", "What is -2 + 5 - 3?"),
        ("6 - 7 =", "-7 + 6 ="),
        ("Compute 1.5 + 2.25 - 3.", "Compute -3 + 2.25 + 1.5."),
        ("2 * 3 + 4 =", None),  # precedence: reordering would change the value
        ("3 + 4 * 2", None),
        ("(1 + 2) - 3", None),
        ("10 - -3 =", None),
        ("1 + 2 and 3 + 4", None),  # two expressions: which one?
        ("On 2024-01-05 we met", None),  # a date is no sum
        ("no numbers here", None),
    ],
)
def test_reorder_terms_keeps_the_sum_and_the_sentence(text, expected):
    assert reorder_terms(text) == expected


def test_reordered_sums_are_equal():
    import re

    for text in (CHAIN, "What is -3 + 5 - 2?", "12 - 5 + 8 - 1 + 30 ="):
        out = reorder_terms(text)
        value = lambda s: eval(re.sub(r"[^0-9+\-. ]", "", s))  # noqa: E731, S307 - digits only
        assert value(out) == value(text)


def test_template_view_and_conversation_rewrite():
    view = TASK.views["ask"]
    assert rewrite_question("2 + 2", view) == "Question: 2 + 2\nReply with a number."
    messages = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "first 1 + 2"},
        {"role": "assistant", "content": "3"},
        {"role": "user", "content": CHAIN},
    ]
    out, rewritten = view_conversation(messages, REORDER)
    assert rewritten and out[3]["content"].endswith("7 - 8 + 9 =")
    assert out[:3] == messages[:3] and messages[3]["content"] == CHAIN  # input untouched
    same, rewritten = view_conversation([{"role": "user", "content": "hello"}], REORDER)
    assert not rewritten and same == [{"role": "user", "content": "hello"}]
    assert view_conversation(messages, None) == (messages, False)


def test_view_config_is_checked():
    with pytest.raises(ParameterError, match="question"):
        validate_block("task", {"views": {"v": {"kind": "template", "template": "no slot"}}})
    with pytest.raises(ParameterError, match="kind"):
        validate_block("task", {"views": {"v": {"kind": "shuffle"}}})
    with pytest.raises(ParameterError, match="template"):
        validate_block("task", {"views": {"v": {"kind": "reorder_terms", "templat": "x"}}})
    with pytest.raises(ParameterError, match="view"):
        validate_block(
            "generate", {"strategies": {"d": {"weight": 1, "temperature": 1, "veiw": "x"}}}
        )


# ---------------------------------------------------------------- generate


def _prompts(texts: list[str]) -> pd.DataFrame:
    rows = []
    for text in texts:
        messages = [{"role": "user", "content": text}]
        rows.append({"prompt_id": stable_hash(messages), "messages": messages, "split": "train"})
    return pd.DataFrame(rows)


TEXTS = [CHAIN, "What is 4 - 1 + 2?", "Say hello", "What is 5 + 6 - 3?"]


def _config(**strategies) -> GenerateParams:
    base = {"direct": {"weight": 1.0, "temperature": 0.8, "max_new_tokens": 4}}
    return GenerateParams.model_validate(
        {"num_candidates": 3, "shard_size": 2, "token_budget": 256, "strategies": base | strategies}
    )


def test_a_strategy_without_view_keeps_todays_shard_key():
    # the hash the shard plan had before views existed (computed with that code)
    strategy = StrategyParams(weight=1.0, temperature=0.8, max_new_tokens=32)
    assert stable_hash(strategy_key("direct", strategy)) == "a6129d414d894202"
    viewed = StrategyParams(weight=1.0, temperature=0.8, max_new_tokens=32, view="reorder")
    assert stable_hash(strategy_key("direct", viewed, REORDER)) != "a6129d414d894202"


def test_view_strategies_answer_the_rewritten_prompt(tiny_policy, monkeypatch):
    seen: dict[str, list] = {}
    real = generate_nodes.generate_completions

    def spy(policy, conversations, **kwargs):
        seen.setdefault(kwargs["progress"].split()[-1], []).extend(conversations)
        return real(policy, conversations, **kwargs)

    monkeypatch.setattr(generate_nodes, "generate_completions", spy)
    reorder = {"weight": 2.0, "temperature": 0.8, "max_new_tokens": 4, "view": "reorder"}
    config = _config(reorder=reorder)
    shards = generate_candidates(_prompts(TEXTS), tiny_policy, config, 42, TASK)
    candidates, metrics = collect_candidates(shards)
    assert list(candidates.columns) == CANDIDATE_COLUMNS
    assert candidates["strategy"].value_counts().to_dict() == {"reorder": 8, "direct": 4}
    users = {s: [c[-1]["content"] for c in convs] for s, convs in seen.items()}
    assert set(users["direct"]) <= set(TEXTS)
    assert sorted(users["reorder"]) == sorted(
        [
            "State the final answer to the following arithmetic problem: 7 - 8 + 9 =",
            "What is 2 - 1 + 4?",
            "Say hello",
            "What is -3 + 6 + 5?",
        ]
    )
    assert "Say hello" in users["reorder"]  # cannot be rewritten: asked as it is, and counted
    assert metrics["generate.reorder.view_unparsed_prompts"]["value"] == 1
    assert not any("direct.view" in name for name in metrics)


def test_views_leave_other_strategies_candidates_unchanged(tiny_policy):
    plain, _ = collect_candidates(
        generate_candidates(_prompts(TEXTS), tiny_policy, _config(), 42, TASK)
    )
    off = {"weight": 0.0, "temperature": 0.8, "max_new_tokens": 4, "view": "ask"}
    with_off_view, _ = collect_candidates(
        generate_candidates(_prompts(TEXTS), tiny_policy, _config(ask=off), 42, TASK)
    )
    pd.testing.assert_frame_equal(plain, with_off_view)
    # same seeds as today: the direct strategy's draws do not depend on another strategy
    on = dict(off, weight=1.0)
    mixed, _ = collect_candidates(
        generate_candidates(_prompts(TEXTS), tiny_policy, _config(ask=on), 42, TASK)
    )
    assert set(mixed["strategy"]) == {"direct", "ask"}
    shared = mixed[mixed.strategy == "direct"].merge(plain, on="candidate_id", suffixes=("", "_p"))
    assert len(shared) and (shared["completion"] == shared["completion_p"]).all()


def test_an_unknown_view_is_a_clear_error(tiny_policy):
    config = _config(x={"weight": 1.0, "temperature": 0.8, "view": "nope"})
    with pytest.raises(ValueError, match=r"strategies.x.view is 'nope'"):
        generate_candidates(_prompts(TEXTS), tiny_policy, config, 42, TASK)


# ---------------------------------------------------------------- cross_view scorer


def _candidates(groups: dict[str, list[tuple[str, str]]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, prompts = [], []
    for pid, items in groups.items():
        prompts.append({"prompt_id": pid, "messages": [{"role": "user", "content": "1 + 2"}]})
        for j, (strategy, answer) in enumerate(items):
            rows.append(
                {
                    "prompt_id": pid,
                    "candidate_id": f"{pid}-{j}",
                    "strategy": strategy,
                    "completion": f"The answer is {answer}" if answer else "dunno",
                }
            )
    return pd.DataFrame(rows), pd.DataFrame(prompts)


def test_cross_view_rewards_agreement_with_the_other_views_only():
    candidates, prompts = _candidates(
        {
            "p": [
                ("direct", "5"),
                ("direct", "5"),
                ("direct", "5"),
                ("direct", "7"),
                ("reorder", "7"),
                ("reorder", "7"),
                ("reorder", None),
            ],
            "single": [("direct", "1"), ("direct", "1")],
        }
    )
    config = {"scorers": [{"name": "cross_view", "type": "cross_view", "agree_value": 1.0}]}
    scored, summary = score_candidates(candidates, prompts, config, {})
    p = scored[scored.prompt_id == "p"].set_index("candidate_id")
    # direct candidates are judged by the reorder view's majority (7), reorder ones by direct's (5)
    assert p["score_cross_view"].tolist() == [0, 0, 0, 1, 0, 0, 0]
    assert p["cross_view_other_views_answer"].tolist() == ["7"] * 4 + ["5"] * 3
    assert p["cross_view_view"].tolist() == ["direct"] * 4 + ["reorder"] * 3
    # its own view's majority (5 for direct) never counts
    single = scored[scored.prompt_id == "single"]
    assert (single["score_cross_view"] == 0).all()
    assert single["cross_view_other_views_answer"].isna().all()
    assert summary["cross_view.single_view_share"] == 0.5
    assert summary["cross_view.agree_share"] == pytest.approx(1 / 7)


def test_cross_view_merges_strategies_into_views():
    candidates, prompts = _candidates(
        {"p": [("direct", "5"), ("cot", "5"), ("reorder", "5"), ("reorder", "6")]}
    )
    entry = {"name": "xv", "type": "cross_view", "views": {"cot": "prompt", "direct": "prompt"}}
    scored, _ = score_candidates(candidates, prompts, {"scorers": [entry]}, {})
    # prompt view (5, 5) vs reorder view (5, 6: a tie, no majority under ties: none)
    assert scored["score_xv"].tolist() == [0, 0, 1, 0]
    assert scored["xv_view"].tolist() == ["prompt", "prompt", "reorder", "reorder"]
    tied = {"name": "xv", "type": "cross_view", "views": {"cot": "prompt"}, "ties": "all"}
    scored, _ = score_candidates(candidates, prompts, {"scorers": [tied]}, {})
    assert scored["score_xv"].tolist() == [1, 1, 1, 0]  # direct and cot: separate views now


def test_cross_view_config_typos_are_errors():
    with pytest.raises(ParameterError, match="ties"):
        validate_block("score", {"scorers": [{"type": "cross_view", "tie": "none"}]})
    validate_block("score", {"scorers": [{"type": "cross_view", "views": {"a": "b"}}]})
