"""Health judged against the better signal: agreement with a frozen judge's reference answers."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from taoflow.config.health import HealthParams
from taoflow.health import (
    Verdict,
    detect_collapse,
    health_report,
    judge_agreement_by_prompt,
    promotion_blocked,
    trusted_signals,
)
from taoflow.pipelines.health.nodes import compute_health
from tests.test_health import HEALTH, TASK, make_prompts, make_round


@pytest.fixture(scope="module")
def prompts() -> pd.DataFrame:
    return make_prompts()


@pytest.fixture(scope="module")
def base(prompts) -> pd.DataFrame:
    return make_round(prompts, "base", 1)


def judge_refs(prompts: pd.DataFrame, answer=lambda a, b: a - b) -> pd.DataFrame:
    """The judge stage's ``judge_references`` rows; the judge answers ``answer(a, b)``."""
    metas = [json.loads(m) for m in prompts["meta"]]
    return pd.DataFrame(
        {
            "prompt_id": prompts["prompt_id"],
            "judge": "tiny-judge",
            "mode": "reference",
            "judge_answer": [str(answer(m["a"], m["b"])) for m in metas],
            "judge_confidence": 1.0,
            "n_samples": 1,
            "completion": "",
        }
    )


def sharpened(prompts: pd.DataFrame, round_: int) -> pd.DataFrame:
    """Every sample answers correctly, confidently, at the base's length: sharpening done right.

    On the label-free signals alone it is a consensus collapse (agreement 3/8 → 1, token entropy
    1.1 → 0.4) and nothing else: no copying, no length change, no answer the base never sampled.
    """
    frame = make_round(prompts, "healthy", round_)
    metas = {p: json.loads(m) for p, m in zip(prompts["prompt_id"], prompts["meta"], strict=True)}
    correct = frame["prompt_id"].map(lambda p: metas[p]["a"] - metas[p]["b"])
    frame["completion"] = [f"The result is {c}." for c in correct]
    frame["answer"] = correct.astype(str)
    frame["logprob"] = -0.4 * frame["n_tokens"]
    return frame


def drifted(prompts: pd.DataFrame, base: pd.DataFrame, round_: int) -> pd.DataFrame:
    """As diverse and as long as the base, but its right answers became wrong ones."""
    frame = base.assign(round=round_)
    metas = {p: json.loads(m) for p, m in zip(prompts["prompt_id"], prompts["meta"], strict=True)}
    correct = frame["prompt_id"].map(lambda p: str(metas[p]["a"] - metas[p]["b"]))
    spread = pd.Series([str(90 + i % 8) for i in range(len(frame))], index=frame.index)
    wrong = frame["answer"].where(frame["answer"] != correct, spread)  # no new consensus
    frame["answer"] = wrong
    frame["completion"] = [f"The result is {a}." for a in wrong]
    return frame


# -- the signal --------------------------------------------------------------------------------


def test_judge_agreement_is_a_per_prompt_share_then_a_mean():
    frame = pd.DataFrame(
        {
            "prompt_id": ["a"] * 4 + ["b"] * 2 + ["c"] * 2,
            "completion": ["it is 5", "5", "6", "no idea", "7", "7", "1", "1"],
        }
    )
    refs = pd.DataFrame({"prompt_id": ["a", "b", "c"], "judge_answer": ["5", "8", None]})
    shares = judge_agreement_by_prompt(frame, refs, {"kind": "last_number"})
    # "no idea" has no answer: it disagrees; "c" has no judge answer: left out
    assert shares.to_dict() == {"a": 0.5, "b": 0.0}
    policy, base = trusted_signals(frame, frame.head(6), refs, {"kind": "last_number"})
    assert policy == {
        "judge_agreement": 0.25,
        "judge_agreement_rise": 0.0,
        "judge_agreement_rise_se": 0.0,
        "n_judge_prompts": 2,
    }
    assert base == {"judge_agreement": 0.25, "n_judge_prompts": 2}
    # free-form answers: exact equality of texts means nothing, so no signal (and no rule)
    assert judge_agreement_by_prompt(frame, refs, {"kind": "full"}).empty
    none, _ = trusted_signals(frame, frame, refs, {"kind": "full"})
    assert none["judge_agreement_rise"] is None
    with pytest.raises(ValueError, match="judge_answer"):
        judge_agreement_by_prompt(frame, refs.drop(columns="judge_answer"))


# -- the verdict -------------------------------------------------------------------------------


def test_sharpening_toward_the_judge_is_not_a_collapse(prompts, base):
    policy = sharpened(prompts, 2)
    today, _ = compute_health(policy, prompts, base, HEALTH, TASK)
    assert today["collapsed"] and len(today["reasons"]) == 1  # what the label-free rules say
    assert today["reasons"][0].startswith("consensus collapse")

    judged, metrics = compute_health(
        policy, prompts, base, HEALTH, TASK, judge_references=judge_refs(prompts)
    )
    assert not judged["collapsed"] and judged["reasons"] == []
    assert judged["decided_by"] == ["trusted_rise"]
    assert judged["overruled"][0].startswith("sharpening toward the judge, not collapse")
    assert "consensus collapse" in judged["overruled"][0]
    assert judged["reference_signals"]["judge_agreement"] == pytest.approx(3 / 8)
    assert judged["signals"]["judge_agreement"] == 1.0
    assert judged["signals"]["judge_agreement_rise"] == pytest.approx(5 / 8)
    # the label-free checks are measured as before; only their verdict is overruled
    assert judged["checks"]["entropy_ratio"] == today["checks"]["entropy_ratio"]
    assert judged["checks"]["trusted_rise"]["tripped"]
    assert not judged["checks"]["trusted_fall"]["tripped"]
    assert metrics["health.judge_agreement"]["value"] == 1.0
    assert metrics["health.collapsed"]["value"] == 0.0
    assert promotion_blocked({"round_2": judged}) == (False, "1 health verdict(s), none collapsed")
    # the rule disabled: the label-free verdict stands
    off = HealthParams.model_validate({"thresholds": {"trusted_rise": None}})
    kept, _ = compute_health(policy, prompts, base, off, TASK, judge_references=judge_refs(prompts))
    assert kept["collapsed"] and kept["decided_by"] == ["consensus_collapse"]
    # a judge that disagrees with this consensus does not overrule it
    wrong = judge_refs(prompts, answer=lambda a, b: a + b)
    refused, _ = compute_health(policy, prompts, base, HEALTH, TASK, judge_references=wrong)
    assert refused["collapsed"] and refused["overruled"] == []


def test_a_collapse_whose_judge_agreement_falls_is_still_flagged(prompts, base):
    refs = judge_refs(prompts)
    verdict, _ = compute_health(
        make_round(prompts, "collapsed", 2), prompts, base, HEALTH, TASK, judge_references=refs
    )
    assert verdict["collapsed"] and verdict["overruled"] == []
    assert verdict["signals"]["judge_agreement"] == 0.0
    assert (
        verdict["decided_by"][0] == "consensus_collapse" and "trusted_fall" in verdict["decided_by"]
    )
    assert any(r.startswith("judge agreement fell: 0.38 → 0.00") for r in verdict["reasons"])


def test_the_measured_grpo_collapse_is_caught_whatever_the_judge_says():
    """GRPO at lr 3e-5 (docs/calibration.md): agreement 0.38 → 0.77, token entropy 1.11 → 0.27,
    answers copying a prompt number 37% → 96%, accuracy 0.21 → 0.09."""
    base = {"n_groups": 35, "agreement_mean": 0.38, "token_nll_mean": 1.11}
    base |= {"prompt_copy_share": 0.37, "length_mean": 12.0, "judge_agreement": 0.21}
    grpo = {**base, "agreement_mean": 0.77, "token_nll_mean": 0.27, "prompt_copy_share": 0.96}
    falling = {**grpo, "judge_agreement": 0.09, "judge_agreement_rise": -0.12}
    verdict = detect_collapse(falling, base, HEALTH.thresholds)
    assert verdict.collapsed and verdict.overruled == []
    assert verdict.decided_by == ["consensus_collapse", "prompt_copy", "trusted_fall"]
    # even a judge fooled into agreeing more overrules only the consensus rule: copying stands
    rising = {**grpo, "judge_agreement": 0.31, "judge_agreement_rise": 0.10}
    verdict = detect_collapse(rising, base, HEALTH.thresholds)
    assert verdict.collapsed and verdict.decided_by == ["prompt_copy"]
    assert len(verdict.overruled) == 1


def test_losing_the_judge_is_a_collapse_when_the_label_free_rules_are_silent(prompts, base):
    policy = drifted(prompts, base, 2)
    today, _ = compute_health(policy, prompts, base, HEALTH, TASK)
    assert not today["collapsed"]
    verdict, _ = compute_health(
        policy, prompts, base, HEALTH, TASK, judge_references=judge_refs(prompts)
    )
    assert verdict["collapsed"] and verdict["decided_by"] == ["trusted_fall"]
    assert verdict["checks"]["trusted_fall"]["value"] == pytest.approx(3 / 8)
    off = HealthParams.model_validate({"thresholds": {"trusted_fall": None}})
    quiet, _ = compute_health(
        policy, prompts, base, off, TASK, judge_references=judge_refs(prompts)
    )
    assert not quiet["collapsed"] and quiet["decided_by"] == []


@pytest.mark.parametrize("kind", ["base", "healthy", "collapsed", "sharpened"])
def test_without_a_judge_the_verdict_is_todays(prompts, base, kind):
    policy = sharpened(prompts, 2) if kind == "sharpened" else make_round(prompts, kind, 2)
    plain, plain_metrics = compute_health(policy, prompts, base, HEALTH, TASK)
    explicit, _ = compute_health(policy, prompts, base, HEALTH, TASK, judge_references=None)
    assert plain == explicit
    assert "decided_by" not in plain and "overruled" not in plain
    assert not any(k.startswith("judge") for k in plain["signals"])
    assert not any("trusted" in k or "judge" in k for k in plain_metrics)
    # with the judge, every label-free check reads the same; only the judge's rules are added
    judged, _ = compute_health(
        policy, prompts, base, HEALTH, TASK, judge_references=judge_refs(prompts)
    )
    assert {k: v for k, v in judged["checks"].items() if not k.startswith("trusted")} == plain[
        "checks"
    ]
    # both judge rules off: the label-free verdict, whatever the judge says
    off = HealthParams.model_validate({"thresholds": {"trusted_rise": None, "trusted_fall": None}})
    silent, _ = compute_health(
        policy, prompts, base, off, TASK, judge_references=judge_refs(prompts)
    )
    assert (silent["collapsed"], silent["reasons"]) == (plain["collapsed"], plain["reasons"])
    assert Verdict.from_dict(judged).to_dict()["decided_by"] == judged["decided_by"]


def test_report_shows_the_judge_agreement_and_the_deciding_rule(prompts, base):
    refs = judge_refs(prompts)
    rounds = [
        compute_health(frame, prompts, base, HEALTH, TASK, judge_references=refs)[0]
        for frame in (sharpened(prompts, 2), make_round(prompts, "collapsed", 3))
    ]
    markdown, figure = health_report(rounds, HEALTH.thresholds)
    header = next(line for line in markdown.splitlines() if line.startswith("| round |"))
    assert "judge agreement (base → policy)" in header and "decided by" in header
    table = [line.split("|") for line in markdown.splitlines() if line.startswith("| round_")]
    assert [row[2].strip() for row in table] == [
        "ok (sharpening toward the judge)",
        "**COLLAPSED**",
    ]
    assert table[0][10].strip() == "0.38 → 1.00" and "trusted_rise" in table[0][11]
    assert table[1][10].strip() == "0.38 → 0.00" and "`trusted_fall`" in table[1][11]
    assert "`trusted_rise`=0.05" in markdown
    axes = {ax.get_title(): ax for ax in figure.axes}
    assert len(figure.axes) == 9 and "judge_agreement" in axes
    lines = [ln.get_ydata()[0] for ln in axes["judge_agreement"].get_lines()[1:]]
    assert lines == pytest.approx([3 / 8 + 0.05, 3 / 8 - 0.10])
    # no judge: the section as it was, without the judge's columns, rules or panel
    plain = [compute_health(make_round(prompts, "healthy", 2), prompts, base, HEALTH, TASK)[0]]
    markdown, figure = health_report(plain, HEALTH.thresholds)
    assert "judge" not in markdown and "trusted" not in markdown and len(figure.axes) == 8


# -- the graph ---------------------------------------------------------------------------------


def _health_inputs(monkeypatch, **judge) -> dict[str, list[str]]:
    from taoflow.config.judge import JudgeParams
    from taoflow.config.tao import TaoParams
    from taoflow.pipelines.tao import pipeline as tao

    params = {"tao": TaoParams(rounds=2), "judge": JudgeParams.model_validate(judge)}
    monkeypatch.setattr(tao, "graph_parameters", lambda: params)
    graph = tao.create_pipeline()
    return {n.name: n.inputs for n in graph.nodes if n.name.endswith(".compute_health")}


def test_judge_references_reach_health_only_with_the_reference_judge(monkeypatch):
    on = _health_inputs(monkeypatch, enabled=True, model="tiny-random", mode="reference")
    assert sorted(on) == ["round_1.compute_health", "round_2.compute_health"]
    assert all("judge_references" in inputs for inputs in on.values())
    off = _health_inputs(monkeypatch, enabled=False)
    verdict = _health_inputs(monkeypatch, enabled=True, model="tiny-random", mode="verdict")
    for graph in (off, verdict):
        assert sorted(graph) == sorted(on)
        assert not any("judge_references" in inputs for inputs in graph.values())
        assert {k: [i for i in v if i != "judge_references"] for k, v in on.items()} == graph


def test_smoke_round_with_the_tiny_judge_weighs_its_answers(kedro_project: Path):
    from kedro.framework.session import KedroSession

    from taoflow.core.answers import extract_answer

    runtime = {
        "tao": {"rounds": 1},
        "judge": {"enabled": True, "model": "tiny-random", "max_new_tokens": 4},
        "health": {"thresholds": {"min_prompts": 1}},
    }
    with KedroSession.create(project_path=kedro_project, env="smoke", runtime_params=runtime) as s:
        s.run(to_nodes=["round_1.compute_health"])
    data = kedro_project / "data"
    health = json.loads((data / "08_reporting/round_1/health.json").read_text())
    assert "judge_agreement" in health["signals"]  # the judge's references reached health
    probe = pd.read_parquet(data / "07_model_output/round_1/health_probe.parquet")
    base = pd.read_parquet(data / "07_model_output/health_base_probe.parquet")
    # A random judge rarely writes a number: give it the probe's first answers (or "1") instead,
    # through the catalog file, and judge the round again.
    path = data / "03_primary/judge_references.parquet"
    refs = pd.read_parquet(path)
    first = probe.groupby("prompt_id")["completion"].first()
    answers = {p: extract_answer(c, TASK.answer) or "1" for p, c in first.items()}
    refs["judge_answer"] = refs["prompt_id"].map(answers).fillna("1")
    refs.to_parquet(path)
    with KedroSession.create(project_path=kedro_project, env="smoke", runtime_params=runtime) as s:
        s.run(node_names=["round_1.compute_health"])
    health = json.loads((data / "08_reporting/round_1/health.json").read_text())
    expected, expected_base = trusted_signals(probe, base, refs, TASK.answer)
    assert health["signals"]["n_judge_prompts"] == len(answers) > 0
    assert health["signals"]["judge_agreement"] == expected["judge_agreement"] > 0
    assert health["reference_signals"]["judge_agreement"] == expected_base["judge_agreement"]
    assert "decided_by" in health and {"trusted_rise", "trusted_fall"} <= set(health["checks"])
