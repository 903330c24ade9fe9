"""The MLflow registry gate: promote when the paired CI clears zero, else keep a challenger."""

from __future__ import annotations

import copy
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from taoflow.promotion import CHALLENGER, CHAMPION, Champion, decide, register_and_gate

ITEMS = [f"q{i:02d}" for i in range(40)]


def _scores(n_correct: int) -> dict[str, float]:
    return {item: float(i < n_correct) for i, item in enumerate(ITEMS)}


def test_gate_promotes_then_keeps_challenger(tiny_policy, mlflow_uri, tmp_path):
    name = "gate-test"
    base, good = _scores(10), _scores(30)
    tiny_policy.lineage.update({"round": 1, "algorithm": "rft"})
    mlflow.set_experiment("registry-gate")  # this test's own store, whatever ran before
    with mlflow.start_run() as first:
        promoted = register_and_gate(
            tiny_policy,
            name=name,
            candidate_scores=good,
            baseline_scores=base,
            fingerprint="fp1",
            metric="bench/accuracy",
            n_resamples=200,
        )
    assert promoted.promoted and promoted.alias == CHAMPION
    assert promoted.compared_with == "base" and promoted.ci_low > 0
    client = MlflowClient()
    champion = client.get_model_version_by_alias(name, CHAMPION)
    assert str(champion.version) == promoted.version
    assert champion.tags["taoflow.lineage.algorithm"] == "rft"
    assert champion.tags["taoflow.gate.fingerprint"] == "fp1"
    assert mlflow.get_run(first.info.run_id).data.tags["taoflow.gate.decision"] == CHAMPION
    # The registered version's model card carries the lineage and the gate's evaluation.
    root = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/1", dst_path=str(tmp_path)))
    card = next(root.rglob("model_card.md")).read_text()
    assert "bench/accuracy" in card and "@champion" in card and "vs base" in card
    meta = yaml.safe_load(next(root.rglob("model_card_data.yaml")).read_text())
    assert meta["taoflow"]["algorithm"] == "rft"
    assert meta["model-index"][0]["results"][0]["metrics"][0]["type"] == "accuracy"

    # Other weights, same scores as the champion: not better, so a challenger that says why.
    other = copy.deepcopy(tiny_policy)
    with torch.no_grad():
        next(other.model.parameters()).add_(1e-3)
    with mlflow.start_run() as second:
        kept = register_and_gate(
            other,
            name=name,
            candidate_scores=good,
            baseline_scores=base,
            fingerprint="fp1",
            metric="bench/accuracy",
            n_resamples=200,
        )
    assert not kept.promoted and kept.alias == CHALLENGER
    assert kept.compared_with == f"champion v{promoted.version}" and kept.diff == 0
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == promoted.version
    assert str(client.get_model_version_by_alias(name, CHALLENGER).version) == kept.version
    tags = mlflow.get_run(second.info.run_id).data.tags
    assert tags["taoflow.gate.decision"] == CHALLENGER
    assert "kept as challenger" in tags["taoflow.gate.reason"]

    # The same weights again (e.g. `kedro run --pipeline promote` twice): no new version, no alias
    # moves, and the decision says which version holds them.
    with mlflow.start_run() as third:
        again = register_and_gate(
            tiny_policy,
            name=name,
            candidate_scores=good,
            baseline_scores=base,
            fingerprint="fp1",
            metric="bench/accuracy",
            n_resamples=200,
        )
    assert again.version == promoted.version and again.alias is None and not again.promoted
    assert f"already registered as {name} v{promoted.version}" in again.reason
    assert len(client.search_model_versions(f"name='{name}'")) == 2
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == promoted.version
    assert str(client.get_model_version_by_alias(name, CHALLENGER).version) == kept.version
    assert mlflow.get_run(third.info.run_id).data.tags["taoflow.gate.decision"] == (
        "already_registered"
    )

    # The champion loads back from the registry as something that generates.
    generator = mlflow.transformers.load_model(f"models:/{name}@{CHAMPION}")
    out = generator("What is 3 + 4?", max_new_tokens=3, do_sample=False)
    assert isinstance(out[0]["generated_text"], str)

    # A chat model: messages in (with max_tokens / temperature), an input example to try.
    info = mlflow.models.get_model_info(f"models:/{name}@{CHAMPION}")
    assert {"messages", "max_tokens", "temperature"} <= set(info.signature.inputs.input_names())
    assert info.saved_input_example_info is not None
    model = mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}")
    chat = [{"role": "user", "content": "What is 3 + 4?"}]
    reply = model.predict({"messages": chat, "max_tokens": 3})
    assert reply[0]["choices"][0]["message"]["role"] == "assistant"

    # The versions say what they are and why they hold their alias.
    first_version = client.get_model_version(name, promoted.version)
    assert first_version.description.startswith("**@champion**: bench/accuracy vs base")
    assert "- algorithm: `rft`" in first_version.description
    assert first.info.run_id in first_version.description
    second_version = client.get_model_version(name, kept.version)
    assert second_version.description.startswith("**@challenger**")


def test_gate_without_active_run_is_a_clear_error(tiny_policy, mlflow_uri):
    with pytest.raises(RuntimeError, match="active MLflow run"):
        register_and_gate(
            tiny_policy,
            name="x",
            candidate_scores=_scores(1),
            baseline_scores=_scores(1),
            fingerprint="f",
            metric="m",
        )


def test_decide_against_champion_pairs_on_shared_items():
    champion = Champion(version="3", run_id=None, fingerprint="fp", scores=_scores(20))
    verdict = decide(
        _scores(35), _scores(0), champion, fingerprint="fp", metric="m", n_resamples=200
    )
    assert verdict["promoted"] and verdict["compared_with"] == "champion v3"
    assert verdict["diff"] == pytest.approx(15 / 40)
    worse = decide(_scores(15), _scores(0), champion, fingerprint="fp", metric="m", n_resamples=200)
    assert not worse["promoted"] and worse["ci_high"] < 0
    # Evaluated under other settings: no paired comparison, so no promotion, and the reason says so.
    other = decide(_scores(40), _scores(0), champion, fingerprint="new", metric="m")
    assert not other["promoted"] and "re-evaluate the champion" in other["reason"]
    with pytest.raises(ValueError, match="share no evaluated items"):
        decide({"zz": 1.0}, _scores(0), None, fingerprint="fp", metric="m")


def test_decide_refused_by_health_keeps_challenger_and_says_both_why():
    verdict = decide(
        _scores(40), _scores(0), None, fingerprint="fp", metric="m", refused="consensus collapse"
    )
    assert verdict["promoted"] is False and verdict["ci_low"] > 0
    assert verdict["reason"].startswith("refused by the health guard: consensus collapse; ")
    assert "CI lower bound above 0, but kept as challenger" in verdict["reason"]
