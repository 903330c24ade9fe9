"""A user's mistake stops ``kedro run`` with one line and a non-zero exit; the traceback goes to a file.

Three real ``kedro run`` subprocesses (a bad parameter, a missing usage file, a wrong model id)
and, in-process, the report for a bug and the verbose switch.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from taoflow.config.base import ParameterError
from taoflow.errors import UserError, failure_report
from tests.conftest import PROJECT_ROOT


def kedro_run(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(PROJECT_ROOT / "src"), os.environ.get("PYTHONPATH", "")]
        ),
    }
    env.pop("TAOFLOW_TRACEBACK", None)
    return subprocess.run(
        [sys.executable, "-m", "kedro", "run", *args],
        check=False,
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_one_line(result: subprocess.CompletedProcess, project: Path, *names: str) -> str:
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert result.returncode == 2, output[-3000:]
    assert len(errors) == 1, output[-3000:]
    assert "Traceback" not in output and "╭" not in output  # neither Python's nor rich's
    for name in names:
        assert name in errors[0]
    log = re.search(r"traceback: (\S+\.log)\)", errors[0])
    assert log and "Traceback" in (project / log.group(1)).read_text()
    return errors[0]


def test_bad_parameter(kedro_project):
    result = kedro_run(
        kedro_project, "--pipeline", "ingest", "--params", "ingest.holdout_fraction=1.5"
    )
    line = assert_one_line(result, kedro_project, "ingest.holdout_fraction", "1.5")
    assert "less than 1" in line


def test_missing_usage_file(kedro_project):
    (kedro_project / "data/01_raw/usage.jsonl").unlink()
    result = kedro_run(
        kedro_project, "--pipeline", "ingest", "--params", "model.name_or_path=tiny-random"
    )
    assert_one_line(result, kedro_project, "data/01_raw/usage.jsonl", "usage_files")


def test_wrong_model_id(kedro_project):
    result = kedro_run(
        kedro_project,
        "--pipeline",
        "prepare_base",
        "--params",
        "model.name_or_path=nobody/no-model",
    )
    assert_one_line(result, kedro_project, "'nobody/no-model'", "model.name_or_path")


# ----------------------------------------------------------------------------- in-process


def test_report_of_user_errors_and_bugs(tmp_path):
    from kedro.io import DatasetError

    try:
        try:
            raise ParameterError("parameter 'x.y': bad")
        except ParameterError as inner:
            raise DatasetError("Failed while loading data.\nmore") from inner
    except DatasetError as err:
        line, code = failure_report(err, tmp_path)
    assert code == 2 and line.startswith("Error: parameter 'x.y': bad (traceback: ")
    assert isinstance(ParameterError("x"), UserError)
    try:
        {}["missing"]
    except KeyError as err:
        line, code = failure_report(err, tmp_path)
    assert code == 1 and "unexpected KeyError: 'missing'" in line and "please report" in line
    assert "\n" not in line and len(list(tmp_path.glob("taoflow-error-*.log"))) == 2


@pytest.mark.parametrize("verbose", [False, True])
def test_run_command_prints_one_line_or_the_traceback(monkeypatch, tmp_path, verbose):
    from kedro.framework.cli import project

    from taoflow.cli import _guarded_run

    def failing(**_: object) -> None:
        raise UserError("usage file u.jsonl: broken")

    monkeypatch.setattr(project.run, "callback", failing)
    monkeypatch.chdir(tmp_path)
    if verbose:
        monkeypatch.setenv("TAOFLOW_TRACEBACK", "1")
    else:
        monkeypatch.delenv("TAOFLOW_TRACEBACK", raising=False)
    result = CliRunner().invoke(click.Group(commands=[_guarded_run()]), ["run"])
    if verbose:
        assert isinstance(result.exception, UserError)  # re-raised: the full traceback shows
    else:
        assert result.exit_code == 2
        assert result.output.startswith("Error: usage file u.jsonl: broken (traceback: logs/")
