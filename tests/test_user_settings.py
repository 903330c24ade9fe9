"""The user's conf/local reaches every experiment env; a setting that would be ignored stops the run.

In-process checks of the layered loader (base → local → env), then real ``kedro run``
subprocesses: a missing usage file named in conf/local stops ``--env smoke`` with one line, a
valid one is what ``--env smoke`` ingests, an env that does not exist and a conflicting key each
stop with one line.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from taoflow.config.loader import ConfigConflictError, LayeredConfigLoader, UnknownEnvError
from taoflow.settings import CONFIG_LOADER_ARGS
from tests.test_cli_errors import assert_one_line, kedro_run

MY_USAGE = "usage_files:\n  type: taoflow.datasets.usage_files.UsageFilesDataset\n  sources:\n"


def loader(project, env=None, **kwargs) -> LayeredConfigLoader:
    return LayeredConfigLoader(str(project / "conf"), env=env, **CONFIG_LOADER_ARGS, **kwargs)


def test_local_reaches_every_experiment_env(kedro_project):
    local = kedro_project / "conf" / "local"
    (local / "catalog.yml").write_text(MY_USAGE + "    mine: data/mine.jsonl\n")
    (local / "parameters.yml").write_text("seed: 7\njudge:\n  enabled: true\n")
    for env in (None, "local", "smoke", "rft", "two_rounds"):
        conf = loader(kedro_project, env)
        assert conf["catalog"]["usage_files"]["sources"] == {"mine": "data/mine.jsonl"}, env
        params = conf["parameters"]
        assert params["seed"] == 7 and params["judge"]["enabled"] is True, env
    smoke = loader(kedro_project, "smoke")["parameters"]
    # the experiment's own keys still apply, and base's untouched ones stay
    assert smoke["model"]["name_or_path"] == "tiny-random" and smoke["tao"]["rounds"] == 2
    assert smoke["judge"]["mode"] == loader(kedro_project)["parameters"]["judge"]["mode"]


def test_same_key_set_differently_stops_naming_both_files(kedro_project):
    local = kedro_project / "conf" / "local"
    (local / "parameters.yml").write_text("model:\n  name_or_path: my-org/my-model\n")
    with pytest.raises(ConfigConflictError) as err:
        loader(kedro_project, "smoke")["parameters"]
    message = str(err.value)
    assert "\n" not in message
    for part in ("model.name_or_path", "conf/local/parameters.yml", "conf/smoke/parameters.yml"):
        assert part in message
    # the same value in both is no conflict; --params beats both, so it decides
    (local / "parameters.yml").write_text("model:\n  name_or_path: tiny-random\n")
    assert loader(kedro_project, "smoke")["parameters"]["model"]["name_or_path"] == "tiny-random"
    (local / "parameters.yml").write_text("model:\n  name_or_path: my-org/my-model\n")
    runtime = {"model": {"name_or_path": "a/b"}}
    chosen = loader(kedro_project, "smoke", runtime_params=runtime)["parameters"]
    assert chosen["model"]["name_or_path"] == "a/b"
    # without an experiment env, conf/local is Kedro's own env and simply wins
    assert loader(kedro_project)["parameters"]["model"]["name_or_path"] == "my-org/my-model"


def test_catalog_entry_in_both_stops(kedro_project):
    (kedro_project / "conf" / "local" / "catalog.yml").write_text(
        MY_USAGE + "    mine: data/mine.jsonl\n"
    )
    (kedro_project / "conf" / "smoke" / "catalog.yml").write_text(
        MY_USAGE + "    other: data/other.jsonl\n"
    )
    with pytest.raises(ConfigConflictError, match=r"usage_files is set in your conf/local/"):
        loader(kedro_project, "smoke")["catalog"]


def test_unknown_env_names_the_missing_folder(kedro_project):
    with pytest.raises(UnknownEnvError, match=r"'doesnotexist' does not exist.*conf/doesnotexist"):
        loader(kedro_project, "doesnotexist")


# -- through `kedro run` -------------------------------------------------------------------------


def test_missing_usage_file_in_local_stops_the_smoke_run(kedro_project):
    (kedro_project / "conf" / "local" / "catalog.yml").write_text(
        MY_USAGE + "    usage: data/01_raw/not-there.jsonl\n"
    )
    result = kedro_run(kedro_project, "--env", "smoke")
    assert_one_line(result, kedro_project, "data/01_raw/not-there.jsonl")
    assert not (kedro_project / "data/03_primary/prompts.parquet").exists()


def test_valid_usage_file_in_local_is_what_smoke_ingests(kedro_project):
    from kedro.framework.session import KedroSession

    from taoflow.core.text import as_messages

    rows = [{"messages": [{"role": "user", "content": f"What is {i} + 9?"}]} for i in range(6)]
    mine = kedro_project / "data" / "mine.jsonl"
    mine.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (kedro_project / "conf" / "local" / "catalog.yml").write_text(
        MY_USAGE + "    usage: data/mine.jsonl\n"  # the name ingest.files maps
    )
    with KedroSession.create(project_path=kedro_project, env="smoke") as session:
        session.run(pipeline_names=["ingest"])
    prompts = pd.read_parquet(kedro_project / "data/03_primary/prompts.parquet")
    texts = [as_messages(m)[-1]["content"] for m in prompts["messages"]]
    assert len(texts) == 6 and all(t.endswith(" + 9?") for t in texts), texts


def test_unknown_env_is_one_line(kedro_project):
    result = kedro_run(kedro_project, "--env", "doesnotexist", "--pipeline", "ingest")
    line = assert_one_line(result, kedro_project, "'doesnotexist'", "conf/doesnotexist")
    assert "mlflow" not in line.lower()
    assert "maintenance mode" not in result.stdout + result.stderr  # MLflow's file store


def test_conflict_is_one_line(kedro_project):
    (kedro_project / "conf" / "local" / "parameters.yml").write_text(
        "model:\n  name_or_path: my-org/my-model\n"
    )
    result = kedro_run(kedro_project, "--env", "smoke", "--pipeline", "ingest")
    assert_one_line(result, kedro_project, "model.name_or_path", "conf/local/parameters.yml")


def test_wrong_model_id_under_an_env_is_one_line(kedro_project):
    result = kedro_run(
        kedro_project,
        "--env",
        "rft",
        "--pipeline",
        "prepare_base",
        "--params",
        "model.name_or_path=nope/nope",
    )
    assert_one_line(result, kedro_project, "'nope/nope'", "model.name_or_path")
