"""Runs are safe to kill, to start twice and to log: outputs land whole or not at all, one run
at a time holds a project directory, values from the environment never reach MLflow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import yaml

from taoflow.core import locks
from taoflow.hooks import RUN_LOCK, RunLockHook

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SRC = str(PROJECT_ROOT / "src")

# A child that starts saving a big frame with dataset TYPE, reports half-way, then waits to be
# killed: the write is interrupted at a known point, without timing.
KILLED_SAVE = textwrap.dedent(
    """
    import sys, time
    import pandas as pd
    from kedro.io.core import parse_dataset_definition

    kind, target = sys.argv[1], sys.argv[2]
    cls, _ = parse_dataset_definition({"type": kind})
    real = pd.DataFrame.to_parquet

    def halfway(self, handle, **kwargs):
        handle.write(b"PAR1" + b"x" * 100_000)  # half a file, as a killed writer leaves it
        handle.flush()
        print("halfway", flush=True)
        time.sleep(600)

    pd.DataFrame.to_parquet = halfway
    cls(filepath=target).save(pd.DataFrame({"x": range(10)}))
    """
)


def kill_mid_save(kind: str, target: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_SAVE, kind, str(target)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    for line in child.stdout:
        if line.strip() == "halfway":
            break
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)


@pytest.mark.parametrize(
    ("kind", "survives"),
    [("taoflow.datasets.atomic.ParquetDataset", True), ("pandas.ParquetDataset", False)],
)
def test_a_save_killed_midway_leaves_the_old_file_intact(tmp_path, kind, survives):
    target = tmp_path / "prompts.parquet"
    old = pd.DataFrame({"x": [1, 2, 3]})
    old.to_parquet(target)
    kill_mid_save(kind, target)
    if survives:
        pd.testing.assert_frame_equal(pd.read_parquet(target), old)
    else:  # kedro-datasets' own dataset writes in place: the file is ruined
        with pytest.raises(Exception):  # noqa: B017, PT011 - pyarrow's error types vary
            pd.read_parquet(target)


def test_every_file_dataset_in_the_catalog_saves_atomically():
    """No catalog entry (or the dataset inside a wrapper) uses an in-place kedro-datasets type."""
    in_place = ("pandas.", "json.", "pickle.", "text.", "matplotlib.")
    found = []
    for file in sorted((PROJECT_ROOT / "conf/base").glob("catalog*.yml")):
        for name, entry in (yaml.safe_load(file.read_text()) or {}).items():
            stack = [entry]
            while stack:
                item = stack.pop()
                if isinstance(item, dict):
                    stack += list(item.values())
                    kinds = [item.get("type"), item.get("dataset")]
                    found += [(file.name, name, k) for k in kinds if str(k).startswith(in_place)]
    assert found == []


def test_atomic_datasets_round_trip_every_format(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from taoflow.datasets import atomic

    frame = pd.DataFrame({"a": [1, 2]})
    cases = [
        (atomic.ParquetDataset, "f.parquet", frame),
        (atomic.PandasJSONDataset, "f.json", frame),
        (atomic.JSONDataset, "d.json", {"k": [1, 2]}),
        (atomic.PickleDataset, "p.pkl", {"k": 1}),
        (atomic.TextDataset, "t.md", "# hi\n"),
    ]
    for cls, name, data in cases:
        ds = cls(filepath=str(tmp_path / name))
        ds.save(data)
        loaded = ds.load()
        assert loaded.equals(data) if isinstance(data, pd.DataFrame) else loaded == data
    fig = plt.figure()
    atomic.MatplotlibDataset(filepath=str(tmp_path / "fig.png")).save(fig)
    plt.close(fig)
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob("*.partial"))


HOLDER = textwrap.dedent(
    """
    import sys
    from taoflow.hooks import RunLockHook
    RunLockHook().before_pipeline_run({"project_path": sys.argv[1]}, None, None)
    print("held", flush=True)
    sys.stdin.read()
    """
)


def test_one_run_at_a_time_per_project(kedro_project, mlflow_uri):
    from kedro.framework.session import KedroSession

    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(kedro_project), "kedro", "run"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    try:
        for line in holder.stdout:  # Kedro's logging may print first
            if line.strip() == "held":
                break
        with pytest.raises(locks.LockHeldError, match=f"pid {holder.pid} on .*kedro run"):
            RunLockHook().before_pipeline_run({"project_path": str(kedro_project)}, None, None)
        # A whole session is refused before any node (and before kedro-mlflow opens a run).
        with (
            KedroSession.create(project_path=kedro_project) as session,
            pytest.raises(locks.LockHeldError, match=f"pid {holder.pid}"),
        ):
            session.run(pipeline_name="ingest")
        assert not (kedro_project / "data/03_primary/prompts.parquet").exists()
    finally:
        holder.kill()  # SIGKILL: the kernel drops the lock with its holder, nothing stale
        holder.wait(timeout=30)
    hook = RunLockHook()
    hook.before_pipeline_run({"project_path": str(kedro_project)}, None, None)
    info = json.loads((kedro_project / RUN_LOCK).read_text())
    assert info["pid"] == os.getpid()
    hook.after_pipeline_run({}, None, None, None)
    assert not locks.held(kedro_project / RUN_LOCK)


def test_env_values_in_config_never_reach_the_mlflow_store(kedro_project, tmp_path, monkeypatch):
    """A secret planted in env vars the config interpolates (the tracking URI, a parameter, a
    catalog entry) appears nowhere in the MLflow store: database and artifacts."""
    import uuid

    import mlflow
    from kedro.framework.session import KedroSession

    marker = f"sk-planted-{uuid.uuid4().hex[:12]}"
    store = tmp_path / f"store-{marker}"
    store.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    monkeypatch.setenv("TAO_MODEL_CACHE", f"data/06_models_{marker}")
    monkeypatch.setenv("TAO_PROBE_TOKEN", f"token-{marker}")
    local = kedro_project / "conf" / "local"
    local.mkdir(exist_ok=True)
    (local / "parameters.yml").write_text("model:\n  cache_dir: ${oc.env:TAO_MODEL_CACHE}\n")
    (local / "catalog.yml").write_text(
        "secret_probe:\n  type: taoflow.datasets.atomic.TextDataset\n"
        "  filepath: data/08_reporting/probe.txt\n"
        "  metadata:\n    token: ${oc.env:TAO_PROBE_TOKEN}\n"
    )
    with KedroSession.create(
        project_path=kedro_project, runtime_params={"model": {"name_or_path": "tiny-random"}}
    ) as session:
        session.run(pipeline_names=["prepare_base"])
    while mlflow.active_run():
        mlflow.end_run()
    (run,) = mlflow.search_runs(experiment_names=["taoflow"], output_format="list")
    pass
    artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
    resolved = (artifacts / "config" / "resolved_config.yml").read_text()
    assert "token: '***'" in resolved or "token: ***" in resolved
    leaks = [
        str(f)
        for f in [store / "mlflow.db", *artifacts.rglob("*")]
        if f.is_file() and marker.encode() in f.read_bytes()
    ]
    assert leaks == []
