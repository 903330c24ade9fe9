"""MLflow as its users expect: named, described runs; data as run inputs with digests."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest
from kedro.config import OmegaConfigLoader
from kedro.framework.session import KedroSession

from taoflow.config.base import validate_parameters
from taoflow.core.ids import frame_hash
from taoflow.mlflow_run import DESCRIPTION_TAG, input_contexts, run_description, run_name
from taoflow.settings import CONFIG_LOADER_ARGS

PROJECT = Path(__file__).resolve().parents[1]


def _params(env: str | None = None, **overrides) -> dict:
    loader = OmegaConfigLoader(
        conf_source=str(PROJECT / "conf"), env=env, runtime_params=overrides, **CONFIG_LOADER_ARGS
    )
    return validate_parameters(dict(loader["parameters"]))


@pytest.mark.parametrize(
    ("env", "overrides", "names", "expected"),
    [
        ("local", {}, None, "tao-dpo-1round"),
        ("local", {}, ["__default__"], "tao-dpo-1round"),
        ("two_rounds", {}, ["tao"], "tao-dpo-2rounds"),
        (
            "judge",
            {"train": {"algorithm": "dpo"}, "tao": {"rounds": 1}},
            None,
            "tao-dpo-1round-judge",
        ),
        ("judge", {}, None, "tao-rft-2rounds-judge"),
        ("lora", {"train": {"algorithm": "kto"}}, None, "tao-kto-1round-lora"),
        ("smoke", {}, None, "tao-rft-2rounds"),
        ("local", {}, ["train"], "train"),
        ("local", {}, ["ingest", "generate"], "ingest+generate"),
    ],
)
def test_run_name_says_what_ran(env, overrides, names, expected):
    assert run_name(names, _params(env, **overrides)) == expected


def test_description_comes_from_the_config():
    text = run_description(None, "judge", _params("judge"))
    assert "composed `tao` pipeline" in text and "env `judge`" in text
    assert "`rft` (full fine-tuning)" in text and "2 TAO round(s)" in text
    assert "majority_vote (majority_vote, weight 1)" in text and "judge (judge, weight 1)" in text
    assert "`embedded-judge` (transformers, reference mode" in text
    stage = run_description(["train"], None, _params())
    assert "stage `train`" in stage and "env `local`" in stage and "TAO round" not in stage


def test_benchmarks_are_evaluation_inputs_prompts_training():
    contexts = input_contexts(_params())
    assert contexts["prompts"] == "training" and contexts["benchmark"] == "evaluation"


def _inputs(run) -> dict[str, tuple[str, str, dict[str, str]]]:
    out = {}
    for entry in run.inputs.dataset_inputs:
        tags = {t.key: t.value for t in entry.tags}
        out[entry.dataset.name] = (entry.dataset.digest, tags.get("mlflow.data.context"), tags)
    return out


def test_ingest_alone_logs_named_described_run_with_input_digests(kedro_project):
    with KedroSession.create(project_path=kedro_project, env="smoke") as session:
        session.run(pipeline_names=["ingest"])
    (run,) = mlflow.search_runs(experiment_names=["taoflow"], output_format="list")
    assert run.info.run_name == "ingest"
    note = run.data.tags[DESCRIPTION_TAG]
    assert "stage `ingest`" in note and "env `smoke`" in note and "`tiny-random`" in note
    prompts = pd.read_parquet(kedro_project / "data/03_primary/prompts.parquet")
    inputs = _inputs(run)
    assert inputs["prompts"][:2] == (frame_hash(prompts), "training")
    usage_digest, context, _ = inputs["usage_files"]
    assert context == "training" and len(usage_digest) == 16
    # the usage files' content hash, per source and as a whole
    assert run.data.tags["input_sha256.usage_files"] == usage_digest
    assert len(run.data.tags["input_sha256.usage_files.usage"]) == 16


def test_run_name_from_mlflow_yml_wins(kedro_project):
    base = (kedro_project / "conf" / "base" / "mlflow.yml").read_text()
    assert "    name: null" in base
    named = base.replace("    name: null", "    name: my-experiment", 1)
    (kedro_project / "conf" / "smoke" / "mlflow.yml").write_text(named)
    with KedroSession.create(project_path=kedro_project, env="smoke") as session:
        session.run(pipeline_names=["ingest"])
    (run,) = mlflow.search_runs(experiment_names=["taoflow"], output_format="list")
    assert run.info.run_name == "my-experiment"


def test_input_sources_from_env_values_are_masked(kedro_project, monkeypatch):
    """A usage file whose path comes from an env variable: its run input names no such value."""
    import shutil
    import uuid

    marker = f"sk-planted-{uuid.uuid4().hex[:12]}"
    folder = kedro_project / "data" / "01_raw" / marker
    folder.mkdir()
    shutil.copy(kedro_project / "data/01_raw/usage.jsonl", folder / "usage.jsonl")
    monkeypatch.setenv("TAO_USAGE_DIR", f"data/01_raw/{marker}")
    (kedro_project / "conf" / "smoke" / "catalog.yml").write_text(
        "usage_files:\n  type: taoflow.datasets.usage_files.UsageFilesDataset\n"
        "  sources:\n    usage: ${oc.env:TAO_USAGE_DIR}/usage.jsonl\n"
    )
    with KedroSession.create(project_path=kedro_project, env="smoke") as session:
        session.run(pipeline_names=["ingest"])
    (run,) = mlflow.search_runs(experiment_names=["taoflow"], output_format="list")
    (usage,) = [i.dataset for i in run.inputs.dataset_inputs if i.dataset.name == "usage_files"]
    assert "***" in usage.source and marker not in usage.source
    db = Path(mlflow.get_tracking_uri().removeprefix("sqlite:///"))
    assert marker.encode() not in db.read_bytes()
