"""Shared fixtures: offline, tiny models built on the spot, throwaway MLflow stores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # an accidental hub download fails loudly
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["KEDRO_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "1"

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A seeded tiny random Llama chat model with a ChatML template, saved once per test session."""
    from taoflow.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_policy(tiny_model_dir):
    """The tiny model loaded as a Policy (shared, read-only: copy before training)."""
    from taoflow.models import load_policy

    return load_policy(str(tiny_model_dir))


@pytest.fixture()
def mlflow_uri(tmp_path, monkeypatch) -> str:
    """A throwaway SQLite MLflow store, also exported so kedro-mlflow picks it up."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    # A previous test's active experiment id would not exist in this fresh store.
    mlflow.set_experiment("Default")
    yield uri
    if mlflow.active_run():
        mlflow.end_run()


@pytest.fixture()
def kedro_project(tmp_path, monkeypatch, mlflow_uri) -> Path:
    """A throwaway copy of the project (pyproject, conf, shipped raw data) to run pipelines in.

    Pipelines write relative ``data/`` paths; running in a copy keeps the real project clean.
    ``conf/local`` is left empty so a developer's overrides never leak into tests.
    """
    import shutil

    from kedro.framework.startup import bootstrap_project

    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(PROJECT_ROOT / "pyproject.toml", root)
    shutil.copytree(PROJECT_ROOT / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf" / "local").mkdir()
    (root / "src").mkdir()  # taoflow itself is installed; bootstrap only checks the folder
    shutil.copytree(PROJECT_ROOT / "data" / "01_raw", root / "data" / "01_raw")
    monkeypatch.chdir(root)
    bootstrap_project(root)
    return root
