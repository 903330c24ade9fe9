"""Label-free health: signals, the collapse detector, the fallback, the gate, probe and report."""

from __future__ import annotations

import json
import math
import random

import pandas as pd
import pytest

from taoflow.config.health import HealthParams
from taoflow.config.shared import TaskParams
from taoflow.health import (
    Verdict,
    copies_prompt,
    detect_collapse,
    group_signals,
    health_report,
    health_signals,
    promotion_blocked,
)
from taoflow.pipelines.health.nodes import compute_health, select_next_policy

TASK = TaskParams.model_validate({"answer": {"kind": "last_number"}})
HEALTH = HealthParams()
N_PROMPTS = 12
N_SAMPLES = 8


# -- synthetic rounds ------------------------------------------------------------------------


def make_prompts(n: int = N_PROMPTS) -> pd.DataFrame:
    """'a - b' problems whose answer is neither operand, so copying one is always wrong."""
    pairs = [(a, b) for a in range(5, 10) for b in range(1, 5) if a - b not in (a, b)][:n]
    return pd.DataFrame(
        {
            "prompt_id": [f"p{i:02d}" for i in range(len(pairs))],
            "messages": [
                [
                    {"role": "system", "content": "Answer with the final number only."},
                    {"role": "user", "content": f"What is {a} - {b}?"},
                ]
                for a, b in pairs
            ],
            "source": "synthetic",
            "split": "train",
            "meta": [json.dumps({"a": a, "b": b}) for a, b in pairs],
        }
    )


def make_round(
    prompts: pd.DataFrame,
    kind: str,
    round_: int,
    seed: int = 0,
    with_answer: bool = True,
) -> pd.DataFrame:
    """Candidates-like rows: `base` (diverse, 3/8 correct), `healthy` (5/8 correct), `collapsed`.

    `collapsed` is the measured hack: every candidate answers the first operand, short and
    confident (high log-prob per token).
    """
    rng = random.Random(seed)
    rows = []
    for prompt_id, meta in zip(prompts["prompt_id"], prompts["meta"], strict=True):
        a, b = json.loads(meta)["a"], json.loads(meta)["b"]
        correct = a - b
        wrong = [x for x in range(10, 40) if x != correct]
        if kind == "base":
            answers = [correct] * 3 + [a] + rng.sample(wrong, 4)
            per_token, lengths = -1.1, [rng.randint(10, 14) for _ in range(N_SAMPLES)]
        elif kind == "healthy":
            answers = [correct] * 5 + rng.sample(wrong, 3)
            per_token, lengths = -0.9, [rng.randint(9, 13) for _ in range(N_SAMPLES)]
        elif kind == "collapsed":
            answers = [a] * N_SAMPLES
            per_token, lengths = -0.3, [3] * N_SAMPLES
        else:
            raise ValueError(kind)
        for i, (answer, n_tokens) in enumerate(zip(answers, lengths, strict=True)):
            rows.append(
                {
                    "prompt_id": prompt_id,
                    "candidate_id": f"{prompt_id}-{i}",
                    "round": round_,
                    "strategy": "sample",
                    "temperature": 0.8,
                    "seed": seed,
                    "completion": f"The result is {answer}.",
                    "n_tokens": n_tokens,
                    "finish_reason": "stop",
                    "logprob": per_token * n_tokens,
                }
            )
    frame = pd.DataFrame(rows)
    if with_answer:
        frame["answer"] = frame["completion"].str.extract(r"(\d+)\.$")[0]
        frame["reward"] = 0.0
        frame["advantage"] = 0.0
    return frame


@pytest.fixture(scope="module")
def prompts() -> pd.DataFrame:
    return make_prompts()


@pytest.fixture(scope="module")
def base(prompts) -> pd.DataFrame:
    return make_round(prompts, "base", 1)


# -- signals -----------------------------------------------------------------------------------


def test_signals_measure_diversity_agreement_copying_and_entropy(prompts, base):
    collapsed = make_round(prompts, "collapsed", 2)
    s_base = health_signals(base, prompts, TASK.answer)
    s_bad = health_signals(collapsed, prompts, TASK.answer, reference=base)
    assert s_base["n_prompts"] == N_PROMPTS and s_base["n_candidates"] == N_PROMPTS * N_SAMPLES
    assert s_base["agreement_mean"] == pytest.approx(3 / 8)
    assert s_base["distinct_answers_mean"] == pytest.approx(6)
    assert s_base["prompt_copy_share"] == pytest.approx(1 / 8)
    assert s_base["token_nll_mean"] == pytest.approx(1.1)
    assert s_base["answer_entropy_mean"] > 1.5
    assert s_bad["agreement_mean"] == 1.0 and s_bad["unanimous_share"] == 1.0
    assert s_bad["distinct_answers_mean"] == 1.0 and s_bad["answer_entropy_mean"] == 0.0
    assert s_bad["prompt_copy_share"] == 1.0
    assert s_bad["token_nll_mean"] == pytest.approx(0.3)
    assert s_bad["length_mean"] == 3.0
    # The base's own answers, scored against the collapsed majority (the first operand): only
    # the one copying candidate per group agrees; the base's own majority got 3/8.
    assert s_bad["base_reward_under_policy"] == pytest.approx(1 / 8)
    assert s_bad["majority_off_base_support"] == 0.0  # the base did sample the operand


def test_answers_are_extracted_when_the_frame_has_none(prompts, base):
    """Holdout outputs / raw candidates carry no `answer`: the task extractor is used."""
    raw = make_round(prompts, "base", 1, with_answer=False)
    assert "answer" not in raw
    assert health_signals(raw, prompts, TASK.answer) == health_signals(base, prompts, TASK.answer)


def test_copy_detection_and_group_table():
    assert copies_prompt("7", "What is 7 - 2?")
    assert not copies_prompt("5", "What is 7 - 2?")
    assert copies_prompt("paris", "Is it Paris or Rome?")
    assert not copies_prompt("par", "Is it Paris or Rome?")
    assert copies_prompt(None, "7 - 2") is None and copies_prompt("7", None) is None
    frame = pd.DataFrame({"prompt_id": ["x"] * 4, "answer": ["1", "1", "2", None]})
    row = group_signals(frame).iloc[0]
    assert (row["n"], row["n_answered"], row["distinct_answers"]) == (4, 3, 2)
    assert row["majority"] == "1" and row["agreement"] == 0.5
    assert row["answer_entropy"] == pytest.approx(
        -(2 / 3) * math.log(2 / 3) - (1 / 3) * math.log(1 / 3)
    )


def test_bad_input_is_a_clear_error(prompts):
    with pytest.raises(ValueError, match="prompt_id"):
        health_signals(pd.DataFrame({"answer": ["1"]}))
    with pytest.raises(ValueError, match="'answer' or a 'completion'"):
        health_signals(pd.DataFrame({"prompt_id": ["a"]}))
    broken = prompts.head(2).copy()
    broken["messages"] = [[{"role": "user"}], []]
    with pytest.raises(ValueError, match="row 0 .*'messages'"):
        health_signals(make_round(prompts.head(2), "base", 1), broken)


# -- the detector ------------------------------------------------------------------------------


def test_detector_fires_on_collapse_and_not_on_healthy_sharpening(prompts, base):
    ref = health_signals(base, prompts, TASK.answer)
    collapsed = health_signals(make_round(prompts, "collapsed", 2), prompts, reference=base)
    healthy = health_signals(make_round(prompts, "healthy", 2, seed=1), prompts, reference=base)

    bad = detect_collapse(collapsed, ref, {})
    assert bad.collapsed
    assert {name for name, c in bad.checks.items() if c["tripped"]} >= {
        "entropy_ratio",
        "copy_share_rise",
        "length_ratio_min",
    }
    assert any(r.startswith("consensus collapse") for r in bad.reasons)
    assert any(r.startswith("prompt copying") for r in bad.reasons)

    # Agreement rose by exactly the threshold (3/8 → 5/8) but entropy did not collapse.
    good = detect_collapse(healthy, ref, {})
    assert healthy["agreement_mean"] - ref["agreement_mean"] == pytest.approx(0.25)
    assert not good.collapsed and good.reasons == []
    assert good.checks and not any(c["tripped"] for c in good.checks.values())
    # The base judged against itself is healthy too.
    assert not detect_collapse(ref, ref, {}).collapsed


def test_each_rule_is_configurable(prompts, base):
    ref = health_signals(base, prompts)
    collapsed = health_signals(make_round(prompts, "collapsed", 2), prompts, reference=base)
    off = {
        "agreement_rise": None,
        "copy_share_rise": None,
        "length_ratio_min": None,
        "max_tokens_share_rise": None,
        "off_support_share": None,
    }
    assert not detect_collapse(collapsed, ref, off).collapsed
    only_length = {**off, "length_ratio_min": 0.4}
    verdict = detect_collapse(collapsed, ref, only_length)
    assert verdict.collapsed and len(verdict.reasons) == 1
    assert verdict.reasons[0].startswith("length collapse") and "→ 3.0 tokens" in verdict.reasons[0]
    # Too few groups: not judged, and says so.
    small = detect_collapse({**collapsed, "n_groups": 2}, ref, {"min_prompts": 4})
    assert not small.collapsed and "not judged" in small.notes[0]


def test_answer_entropy_is_used_without_logprobs_and_off_support_fires(prompts, base):
    drop = ["logprob", "n_tokens"]
    ref = health_signals(base.drop(columns=drop), prompts)
    bad = health_signals(
        make_round(prompts, "collapsed", 2).drop(columns=drop), prompts, reference=base
    )
    verdict = detect_collapse(bad, ref, {})
    assert verdict.collapsed and "answer entropy" in verdict.reasons[0]
    # A consensus on an answer the base never sampled, on every prompt.
    drifted = make_round(prompts, "collapsed", 2)
    drifted["answer"] = "42"
    signals = health_signals(drifted, prompts, reference=base)
    assert signals["majority_off_base_support"] == 1.0
    assert detect_collapse(signals, ref, {"copy_share_rise": None}).checks["off_support_share"][
        "tripped"
    ]


# -- policy selection and the promotion gate ---------------------------------------------------


def test_health_node_verdict_and_fallback_policy(prompts, base, tiny_policy):
    import dataclasses

    bad, metrics = compute_health(make_round(prompts, "collapsed", 2), prompts, base, HEALTH, TASK)
    assert bad["collapsed"] and bad["round"] == 2 and bad["policy_round"] == 1
    assert metrics["health.collapsed"] == {"value": 1.0, "step": 2}
    assert metrics["health.agreement_mean"]["value"] == 1.0
    json.dumps(bad)  # the JSON dataset must be able to write it

    good, metrics = compute_health(make_round(prompts, "healthy", 2), prompts, base, HEALTH, TASK)
    assert not good["collapsed"] and metrics["health.collapsed"]["value"] == 0.0

    previous = dataclasses.replace(tiny_policy, lineage={**tiny_policy.lineage, "round": 1})
    current = dataclasses.replace(
        tiny_policy, lineage={**tiny_policy.lineage, "round": 2, "name": "round_2"}
    )
    chosen = select_next_policy(current, previous, bad)
    assert chosen.model is previous.model
    assert chosen.lineage["round"] == 2 and chosen.lineage["weights_round"] == 1
    assert chosen.lineage["health_fallback"]["rejected_round"] == 2
    assert chosen.lineage["health_fallback"]["reasons"] == bad["reasons"]
    assert previous.lineage["round"] == 1  # inputs are not mutated
    kept = select_next_policy(current, previous, good)
    assert kept.model is current.model and kept.lineage["health"]["collapsed"] is False

    disabled, _ = compute_health(
        make_round(prompts, "collapsed", 2), prompts, base, HealthParams(enabled=False), TASK
    )
    assert not disabled["collapsed"] and disabled["reasons"] and "enabled" in disabled["notes"][-1]


def test_promotion_gate_refuses_collapsed_policies(prompts, base):
    bad, _ = compute_health(make_round(prompts, "collapsed", 2), prompts, base, HEALTH, TASK)
    good, _ = compute_health(make_round(prompts, "healthy", 3), prompts, base, HEALTH, TASK)
    blocked, why = promotion_blocked({"round_2": bad, "round_3": good})
    assert blocked and why.startswith("collapse detected") and "consensus collapse" in why
    assert promotion_blocked([good]) == (False, "1 health verdict(s), none collapsed")
    assert promotion_blocked(Verdict(True, ["x"], {}))[0]
    assert promotion_blocked({"name": "p", "health": {"collapsed": True, "reasons": ["y"]}})[0]
    assert promotion_blocked(None) == (False, "no health verdict recorded")


def test_report_section_and_figure(prompts, base):
    rounds = [
        compute_health(make_round(prompts, kind, r), prompts, base, HEALTH, TASK)[0]
        for r, kind in ((1, "base"), (2, "healthy"), (3, "collapsed"))
    ]
    markdown, figure = health_report(rounds)
    assert markdown.startswith("## Health")
    table = [line for line in markdown.splitlines() if line.startswith("| round_")]
    assert [line.split("|")[2].strip() for line in table] == ["ok", "ok", "**COLLAPSED**"]
    axes = {ax.get_title(): ax for ax in figure.axes}
    agreement = axes["agreement_mean"]
    threshold = [line for line in agreement.get_lines() if line.get_linestyle() == "--"]
    assert threshold and threshold[0].get_ydata()[0] == pytest.approx(3 / 8 + 0.25)


# -- the pipeline through Kedro and MLflow -----------------------------------------------------


PROBE = {"n_prompts": 4, "n_samples": 2, "max_new_tokens": 4, "split": None}


def _health_run(project, tiny_policy, prompts, policy=None):
    import dataclasses

    from kedro.framework.session import KedroSession

    from taoflow.datasets import PolicyDataset

    round_2 = dataclasses.replace(tiny_policy, lineage={**tiny_policy.lineage, "round": 2})
    PolicyDataset(str(project / "data/06_models/round_2/policy")).save(round_2)
    (project / "data/03_primary").mkdir(parents=True, exist_ok=True)
    prompts.to_parquet(project / "data/03_primary/prompts.parquet")
    runtime = {
        "model": {"name_or_path": "tiny-random"},
        "health": {"probe": PROBE, "policy": policy or "round_2.policy"},
    }
    with KedroSession.create(project_path=project, runtime_params=runtime) as session:
        session.run(pipeline_names=["health"])


def test_health_alone_judges_a_given_policy_in_a_kedro_session(kedro_project, tiny_policy, prompts):
    """`--pipeline health` probes `health.policy` and the base alike and judges one against the
    other, under its own folders, never the composed run's."""
    import mlflow

    _health_run(kedro_project, tiny_policy, prompts)

    own = kedro_project / "data/08_reporting/stages/health"
    health = json.loads((own / "round_2/health.json").read_text())
    assert health["policy_round"] == 2 and health["signals"]["n_prompts"] == 4
    assert health["thresholds"]["agreement_rise"] == 0.25  # from parameters_health.yml
    assert (own / "health.md").read_text().startswith("## Health")
    assert (own / "health.png").stat().st_size > 0
    probes = kedro_project / "data/07_model_output/stages/health"
    assert (probes / "round_2/health_probe.parquet").exists()
    assert (probes / "health_base_probe.parquet").exists()
    reporting = kedro_project / "data/08_reporting"
    assert sorted(p.name for p in reporting.iterdir()) == [
        "stages"
    ]  # nothing of the composed run's

    (run,) = mlflow.search_runs(experiment_names=["taoflow"], output_format="list")
    assert "health.agreement_mean" in run.data.metrics
    assert mlflow.MlflowClient().search_registered_models() == []


def test_health_alone_without_the_policy_stops_naming_it(kedro_project, tiny_policy, prompts):
    from taoflow.errors import failure_report

    with pytest.raises(Exception) as err:  # noqa: PT011 - what matters is the line below
        _health_run(kedro_project, tiny_policy, prompts, policy="round_3.policy")
    line, code = failure_report(err.value, kedro_project / "logs")
    assert code == 2 and "round_3" in line and "\n" not in line, line


def test_probe_samples_a_policy_reproducibly(tiny_policy, prompts):
    import dataclasses

    from taoflow.health import probe_policy

    policy = dataclasses.replace(tiny_policy, lineage={**tiny_policy.lineage, "round": 2})
    config = {"n_prompts": 2, "n_samples": 3, "max_new_tokens": 6}
    frame = probe_policy(policy, prompts, config, seed=7, task={"system_prompt": "Be brief."})
    assert len(frame) == 6 and frame["prompt_id"].tolist() == ["p00"] * 3 + ["p01"] * 3
    assert frame["candidate_id"].is_unique
    assert (frame["round"] == 2).all() and (frame["strategy"] == "probe").all()
    assert frame["n_tokens"].between(1, 6).all() and (frame["logprob"] < 0).all()
    assert set(frame["finish_reason"]) <= {"stop", "length"}
    pd.testing.assert_frame_equal(frame, probe_policy(policy, prompts, config, seed=7))
    assert not frame.equals(probe_policy(policy, prompts, config, seed=8))
    # Holdout prompts are preferred when there are any.
    holdout = prompts.assign(split=["train"] * (N_PROMPTS - 2) + ["holdout"] * 2)
    probed = probe_policy(policy, holdout, {**config, "n_samples": 1}, seed=7)
    assert set(probed["prompt_id"]) == set(holdout["prompt_id"].tail(2))

    one = HealthParams.model_validate({"thresholds": {"min_prompts": 1}})
    health, _ = compute_health(frame, prompts, frame, one, TASK)
    assert health["round"] == 2 and health["policy_round"] == 2  # a probe judges its own policy


@pytest.mark.parametrize("force_collapse", [False, True])
def test_probe_template_picks_the_next_policy(tiny_policy, prompts, force_collapse, tmp_path):
    """The wiring the tao pipeline uses: round_2 probes its policy and picks round_3's start."""
    import dataclasses

    from kedro.io import DataCatalog, MemoryDataset
    from kedro.pipeline import pipeline
    from kedro.runner import SequentialRunner
    from kedro_datasets.json import JSONDataset

    from taoflow.pipelines.health.pipeline import (
        create_reference_probe,
        create_template,
        shared_params,
    )

    round_1 = dataclasses.replace(tiny_policy, lineage={**tiny_policy.lineage, "round": 1})
    round_2 = dataclasses.replace(tiny_policy, lineage={**tiny_policy.lineage, "round": 2})
    template = create_template(select_policy=True, probe_policy=True)
    tao = create_reference_probe() + pipeline(
        template,
        namespace="round_2",
        inputs={
            "prompts": "prompts",
            "health_reference": "health_base_probe",
            "input_policy": "round_1.policy",
        },
        parameters=shared_params(template),
    )
    # A length ratio ≤ 10 always holds: forces the collapse branch with the same samples.
    thresholds = {"min_prompts": 1, "length_ratio_min": 10.0 if force_collapse else 0.4}
    health = {"thresholds": thresholds, "probe": {"n_prompts": 2, "n_samples": 2}}
    health["probe"]["max_new_tokens"] = 4
    data = {
        "prompts": prompts,
        "base_model": tiny_policy,
        "round_1.policy": round_1,
        "round_2.policy": round_2,
        "params:health": HealthParams.model_validate(health),
        "params:task": TASK,
        "params:seed": 0,
    }
    catalog = DataCatalog({k: MemoryDataset(v, copy_mode="assign") for k, v in data.items()})
    catalog["round_2.health"] = JSONDataset(filepath=str(tmp_path / "health.json"))
    catalog["round_2.next_policy"] = MemoryDataset(copy_mode="assign")
    outputs = SequentialRunner().run(tao, catalog)
    verdict, chosen = catalog.load("round_2.health"), outputs["round_2.next_policy"].load()
    assert verdict["policy_round"] == 2 and verdict["collapsed"] is force_collapse
    assert chosen.lineage["round"] == 2
    assert ("health_fallback" in chosen.lineage) is force_collapse
    assert promotion_blocked(verdict)[0] is force_collapse
