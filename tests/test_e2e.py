"""End to end: the real composed `tao` pipeline (two rounds) through KedroSession on `conf/smoke`."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
from kedro.framework.session import KedroSession

from taoflow.core.ids import frame_hash


def test_tao_smoke_runs_every_stage_and_logs_one_mlflow_run(kedro_project, monkeypatch):
    with KedroSession.create(project_path=kedro_project, env="smoke") as session:
        session.run()  # __default__ = tao

    data = kedro_project / "data"
    prompts = pd.read_parquet(data / "03_primary/prompts.parquet")
    assert set(prompts["split"]) == {"train", "holdout"}
    for k in (1, 2):
        candidates = pd.read_parquet(data / f"03_primary/round_{k}/candidates.parquet")
        assert (candidates["round"] == k).all()
        scored = pd.read_parquet(data / f"05_model_input/round_{k}/scored.parquet")
        assert {"reward", "advantage", "score_majority_vote"} <= set(scored.columns)
        lineage = json.loads((data / f"06_models/round_{k}/policy/taoflow.json").read_text())
        assert lineage["round"] == k
        assert (data / f"08_reporting/round_{k}/health.json").is_file()
        audit = pd.read_parquet(data / f"08_reporting/round_{k}/reward_audit.parquet")
        assert set(audit["prompt_id"]) == set(scored["prompt_id"])  # shipped gold covers all
    # round 2 trained from round 1's policy (or, had round 1 collapsed, from the base)
    lineage_2 = json.loads((data / "06_models/round_2/policy/taoflow.json").read_text())
    assert lineage_2.get("parent") or lineage_2.get("base_model")

    results = pd.read_parquet(data / "08_reporting/eval_results.parquet")
    assert {"base", "round_1", "round_2"} <= set(results["model"])
    # the label-free holdout benchmark reads `prompts`, which this same run writes: a project's
    # first run evaluates it too
    assert set(results["benchmark"]) == {"chain_sum", "holdout"}
    assert {"model", "benchmark", "metric", "value", "n", "ci_low", "ci_high"} <= set(results)
    assert (data / "08_reporting/eval_report.md").read_text().strip()

    runs = mlflow.search_runs(experiment_names=["taoflow"], output_format="list")
    assert len(runs) == 1, "one kedro run, one MLflow run"
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "tao-rft-2rounds"  # what ran, from the smoke config
    assert "2 TAO round(s) of `rft`" in run.data.tags["mlflow.note.content"]
    inputs = {
        i.dataset.name: (i.dataset.digest, {t.key: t.value for t in i.tags})
        for i in run.inputs.dataset_inputs
    }
    assert {
        "usage_files",
        "prompts",
        "benchmark",
        "round_1.candidates",
        "round_2.candidates",
    } <= set(inputs)
    assert inputs["prompts"][0] == frame_hash(prompts)
    assert inputs["round_2.candidates"][0] == frame_hash(
        pd.read_parquet(data / "03_primary/round_2/candidates.parquet")
    )
    assert inputs["benchmark"][1]["mlflow.data.context"] == "evaluation"
    assert inputs["round_1.candidates"][1]["round"] == "round_1"
    tables = mlflow.artifacts.list_artifacts(run_id=run.info.run_id, artifact_path="evaluation")
    assert {"evaluation/per_prompt.json", "evaluation/results.json"} <= {a.path for a in tables}
    assert run.data.params["generate.num_candidates"] == "4"  # the smoke override, resolved
    config_file = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="config/resolved_config.yml"
    )
    assert "rounds: 2" in Path(config_file).read_text()
    assert "version.trl" in run.data.tags
    assert any(key.startswith("generate.") for key in run.data.metrics)
    assert run.data.tags.get("taoflow.gate.decision") in {"champion", "challenger"}
    timings = (data / "08_reporting/stage_timings.md").read_text()
    for stage in ("ingest", "generate", "score", "train", "health", "evaluate", "sft_oracle"):
        assert f"| {stage} |" in timings
    assert run.data.metrics["timing.generate.seconds"] > 0
    assert 0 <= run.data.metrics["audit.round_1.pseudo_label_accuracy"] <= 1
    _check_compute_floor(kedro_project)

    # The results notebook runs against this run's catalog, found through a Kedro session.
    import shutil

    import nbformat
    from nbclient import NotebookClient

    from .conftest import PROJECT_ROOT

    notebooks = kedro_project / "notebooks"
    notebooks.mkdir()
    shutil.copy(PROJECT_ROOT / "notebooks" / "tao_results.ipynb", notebooks)
    monkeypatch.setenv("KEDRO_ENV", "smoke")
    notebook = nbformat.read(notebooks / "tao_results.ipynb", as_version=4)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": notebooks}}
    ).execute()
    printed = "".join(
        out.get("text", "") for cell in notebook.cells for out in cell.get("outputs", [])
    )
    assert "rounds found: ['round_1', 'round_2']" in printed


def _check_compute_floor(project: Path) -> None:
    """benchmarks/bench_floor.py reads this run's own outputs: every model-running stage counted."""
    import importlib.util

    from .conftest import PROJECT_ROOT

    spec = importlib.util.spec_from_file_location(
        "bench_floor", PROJECT_ROOT / "benchmarks" / "bench_floor.py"
    )
    floor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(floor)
    params = floor.load_parameters(project, "smoke")
    model = project / "data/06_models/base"
    body, head = floor.model_sizes(model)
    weights = pd.Series({n: p.numel() for n, p in _named_linear_weights(model)}, dtype="int64")
    assert head == weights.filter(like="embed_tokens").sum()  # tied head: the embedding matrix
    assert body == weights.filter(like=".layers.").sum()
    lengths = floor.Lengths(
        project / "data/06_models/base_tokenizer", params["task"]["system_prompt"]
    )
    work = floor.stage_work(project, params, lengths, body, head)
    assert {"evaluate", "generate", "sft_oracle", "train"} <= set(work)
    outputs = floor.eval_shards(project)
    assert set(outputs["model"]) == {"base", "sft_oracle", "round_1", "round_2"}
    assert work["evaluate"]["generated"] == outputs["n_tokens"].sum() > 0
    candidates = sum(
        pd.read_parquet(project / f"data/03_primary/round_{k}/candidates.parquet")["n_tokens"].sum()
        for k in (1, 2)
    )
    assert work["generate"]["generated"] == candidates
    assert all(w["flops"] > 0 for w in work.values())
    assert work["train"]["trained"] > 0 and work["sft_oracle"]["trained"] > 0
    timings = {"evaluate": 2.0, "train": 1.0, "promote": 3.0}
    table = floor.table(work, timings, peak=1e12)
    assert table.splitlines()[-2] == "| other stages |  |  |  |  | 0 | 3 | - |"
    assert table.splitlines()[-1].startswith("| **all** |")


def _named_linear_weights(model_dir: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return [(n, p) for n, p in model.named_parameters() if p.dim() == 2]


def test_rerun_reproduces_candidates_and_scores(kedro_project):
    """Same config + seed ⇒ identical candidates and scores (a fresh run, not resumed shards)."""
    import shutil

    def run_once() -> tuple[pd.DataFrame, pd.DataFrame]:
        with KedroSession.create(
            project_path=kedro_project,
            env="smoke",
            runtime_params={"tao": {"rounds": 1}},
        ) as session:
            session.run(pipeline_names=["ingest", "generate", "score"])
        data = kedro_project / "data"
        return (
            pd.read_parquet(data / "03_primary/round_1/candidates.parquet"),
            pd.read_parquet(data / "05_model_input/round_1/scored.parquet"),
        )

    first = run_once()
    shutil.rmtree(kedro_project / "data" / "02_intermediate")
    second = run_once()
    drop = [c for c in first[0].columns if "seconds" in c]  # wall-clock timing differs
    pd.testing.assert_frame_equal(first[0].drop(columns=drop), second[0].drop(columns=drop))
    drop = [c for c in first[1].columns if "seconds" in c]
    pd.testing.assert_frame_equal(first[1].drop(columns=drop), second[1].drop(columns=drop))
