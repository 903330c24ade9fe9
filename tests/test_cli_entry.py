"""The ``taoflow`` entry point runs the Kedro project when given ``kedro run``'s options.

A Databricks wheel task (kedro-databricks) calls the package's entry point with
``--pipeline X --conf-source /Workspace/.../conf --env E`` (or ``--nodes N ...``); the commands
(``serve``, ``prepare-base``, ``push-to-hub``) keep their own parser. In-process tests check the
routing and the values Kedro's ``run`` receives; one subprocess runs a real stage the way a
Databricks task does: another working directory, ``--conf-source`` absolute, ``TAOFLOW_WORKDIR``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from taoflow import cli
from tests.conftest import PROJECT_ROOT


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--pipeline", "train"], True),
        (["--nodes", "round_1.train_policy", "--conf-source", "/c", "--env", "databricks"], True),
        (["-p", "generate"], True),
        (["run", "--env", "smoke"], True),
        ([], False),
        (["--help"], False),
        (["-h"], False),
        (["serve", "--port", "8001"], False),
        (["prepare-base", "--env", "smoke"], False),
        (["push-to-hub", "folder", "me/repo"], False),
    ],
)
def test_routing(argv, expected):
    assert cli.is_kedro_run(argv) is expected


@pytest.fixture
def recorded_run(monkeypatch, tmp_path):
    """Kedro's ``run`` with its callback replaced by one recording its arguments and cwd."""
    from kedro.framework.cli.project import run

    calls: list[dict] = []

    def record(**kwargs):
        calls.append({**kwargs, "cwd": Path.cwd()})

    monkeypatch.setattr(run, "callback", record)
    monkeypatch.delenv(cli.WORKDIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)  # restored after the test, whatever the entry point changes
    return calls


def test_pipeline_task_arguments_reach_kedro_run(recorded_run, tmp_path):
    # what kedro-databricks' `bundle -g pipeline` puts in a task's python_wheel_task.parameters:
    # `/${workspace.file_path}/conf`, a path with two leading slashes once the bundle resolves it
    conf = tmp_path / "files" / "conf"
    conf.mkdir(parents=True)
    argv = ["--pipeline", "train", "--conf-source", f"/{conf}", "--env", "databricks"]
    assert cli.main(argv) == 0
    (call,) = recorded_run
    assert call["pipeline"] == "train"
    assert Path(call["conf_source"]) == conf
    assert call["env"] == "databricks"


def test_node_task_and_run_command(recorded_run):
    assert cli.main(["--nodes", "round_1.train_policy", "--env", "databricks"]) == 0
    assert cli.main(["run", "--pipeline", "ingest", "--params", "ingest.max_prompts=3"]) == 0
    nodes, run = recorded_run
    assert nodes["node_names"] == ["round_1.train_policy"] and nodes["pipeline"] is None
    assert run["pipeline"] == "ingest" and run["params"] == {"ingest": {"max_prompts": 3}}


def test_workdir_is_where_the_run_works(recorded_run, monkeypatch, tmp_path):
    workdir = tmp_path / "volume" / "dev"
    monkeypatch.setenv(cli.WORKDIR_ENV, str(workdir))
    assert cli.main(["--pipeline", "ingest"]) == 0
    assert recorded_run[0]["cwd"] == workdir.resolve()


def test_workdir_inside_a_project_is_refused(recorded_run, monkeypatch, tmp_path, capsys):
    (tmp_path / "pyproject.toml").write_text('[tool.kedro]\npackage_name = "taoflow"\n')
    monkeypatch.setenv(cli.WORKDIR_ENV, str(tmp_path / "volume"))
    assert cli.main(["--pipeline", "ingest"]) == 2
    assert "is inside the Kedro project" in capsys.readouterr().err
    assert recorded_run == []


def test_bad_run_option_is_clicks_usage_error(recorded_run, capsys):
    assert cli.main(["--pipelinez", "train"]) == 2
    assert "No such option '--pipelinez'" in capsys.readouterr().err
    assert recorded_run == []


def test_commands_keep_their_parser(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["prepare-base", "--help"])
    assert done.value.code == 0
    assert "--cache-dir" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        cli.main(["nope"])
    assert done.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        cli.main([])  # a bare `taoflow` starts nothing
    assert done.value.code == 2


def test_databricks_shaped_run(tmp_path, mlflow_uri):
    """``taoflow --pipeline ingest --conf-source <abs> --env smoke`` from a folder that is not
    the project, data in TAOFLOW_WORKDIR: the stage runs and writes its prompts there."""
    workdir = tmp_path / "volume"
    shutil.copytree(PROJECT_ROOT / "data" / "01_raw", workdir / "data" / "01_raw")
    elsewhere = tmp_path / "driver"
    elsewhere.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(PROJECT_ROOT / "src"), os.environ.get("PYTHONPATH", "")]
        ),
        cli.WORKDIR_ENV: str(workdir),
        "MLFLOW_TRACKING_URI": mlflow_uri,
    }
    env.pop("TAOFLOW_TRACEBACK", None)
    code = "import sys; from taoflow.cli import main; sys.exit(main(sys.argv[1:]))"
    conf = "/" + str(
        PROJECT_ROOT / "conf"
    )  # kedro-databricks writes `/${workspace.file_path}/conf`
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "--pipeline",
            "ingest",
            "--conf-source",
            conf,
            "--env",
            "smoke",
        ],
        check=False,
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    prompts = pd.read_parquet(workdir / "data" / "03_primary" / "prompts.parquet")
    assert len(prompts) > 0 and prompts["prompt_id"].is_unique
    assert not (elsewhere / "data").exists()
