"""Credentials of a shared tracking store never reach what taoflow logs.

A shared MLflow (a server on PostgreSQL, Databricks) is reached through URIs and tokens in the
environment. The resolved configuration that taoflow logs as an artifact, its params and tags
pass through :func:`taoflow.core.secrets.mask_secrets`; these tests load the shipped
configuration with such values set and check that no password or token survives.
(`make check-mlflow-server` checks the same against a real server and its PostgreSQL store.)
"""

from __future__ import annotations

import importlib.util
import uuid

import yaml

from taoflow.core.secrets import MASK, env_secrets, mask_secrets, referenced_env_vars

from .conftest import PROJECT_ROOT


def _loader(conf_source, env="local"):
    from kedro.framework.project import settings

    return settings.CONFIG_LOADER_CLASS(
        conf_source=str(conf_source), env=env, **settings.CONFIG_LOADER_ARGS
    )


def test_a_password_in_the_tracking_uri_is_masked_in_the_resolved_config(
    kedro_project, monkeypatch
):
    password = f"pw-{uuid.uuid4().hex[:10]}"
    uri = f"postgresql+psycopg2://taoflow:{password}@db.internal:5432/mlflow"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    loader = _loader(kedro_project / "conf", env="smoke")
    resolved = {"parameters": dict(loader["parameters"]), "catalog": loader["catalog"]}
    mlflow_conf = loader["mlflow"]
    # the environment wins over mlflow.yml's default: kedro-mlflow is pointed at the shared store
    assert mlflow_conf["server"]["mlflow_tracking_uri"] == uri
    # ... and so is the trace reader (the shipped catalog interpolates the same variable)
    assert resolved["catalog"]["ingest_new_traces"]["tracking_uri"] == uri

    secrets = env_secrets(referenced_env_vars(kedro_project / "conf"))
    assert uri in secrets
    dumped = yaml.safe_dump(mask_secrets(resolved, secrets))
    assert password not in dumped
    assert f"tracking_uri: '{MASK}'" in dumped


def test_databricks_tokens_from_credentials_are_masked_inside_longer_values(
    kedro_project, monkeypatch
):
    """A token referenced only from credentials.yml is still a secret, also where another
    key interpolated it into a longer string, a list or a dict key."""
    token = f"dapi{uuid.uuid4().hex}"
    host = "https://adb-1234567890.12.azuredatabricks.net"
    monkeypatch.setenv("DATABRICKS_TOKEN", token)
    monkeypatch.setenv("DATABRICKS_HOST", host)
    local = kedro_project / "conf" / "local"
    (local / "credentials.yml").write_text(
        "databricks:\n  DATABRICKS_HOST: ${oc.env:DATABRICKS_HOST}\n"
        "  DATABRICKS_TOKEN: ${oc.env:DATABRICKS_TOKEN}\n"
    )
    names = referenced_env_vars(kedro_project / "conf")
    assert {"DATABRICKS_TOKEN", "DATABRICKS_HOST", "MLFLOW_TRACKING_URI"} <= names
    logged = {
        "note": f"served from {host}/serving-endpoints with Bearer {token}",
        "headers": [f"Authorization: Bearer {token}"],
        token: "a key",
    }
    masked = mask_secrets(logged, env_secrets(names))
    text = repr(masked)
    assert token not in text and host not in text
    assert masked["note"] == f"served from {MASK}/serving-endpoints with Bearer {MASK}"


def test_a_uri_holding_a_short_password_is_masked_whole():
    """Short values are not masked on their own (they would garble `1`, `true`); the URI that
    holds them is, and a URI is always long enough."""
    uri = "postgresql://u:pw1@127.0.0.1:5432/mlflow"
    secrets = env_secrets(
        ["MLFLOW_TRACKING_URI", "PGPASSWORD"], {"MLFLOW_TRACKING_URI": uri, "PGPASSWORD": "pw1"}
    )
    assert secrets == (uri,)
    assert mask_secrets({"uri": uri, "n": "pw1x"}, secrets) == {"uri": MASK, "n": "pw1x"}


def test_a_name_the_configuration_reads_from_the_environment_is_not_masked():
    """An experiment named `taoflow` must not turn the tag key `version.taoflow` into
    `version.***` (MLflow rejects it) or garble model names; a URI beside it still is masked."""
    uri = "https://user:tok3n@mlflow.example"
    secrets = env_secrets(
        ["TAOFLOW_EXPERIMENT", "MLFLOW_TRACKING_URI"],
        {"TAOFLOW_EXPERIMENT": "taoflow", "MLFLOW_TRACKING_URI": uri},
    )
    assert secrets == (uri,)
    tags = {"version.taoflow": "0.1", "uri": uri}
    assert mask_secrets(tags, secrets) == {"version.taoflow": "0.1", "uri": MASK}


def test_the_tracking_server_extra_is_pinned():
    """`make check-mlflow-server` installs the extra from pyproject: one exact pin."""
    path = PROJECT_ROOT / "benchmarks" / "check_mlflow_server.py"
    spec = importlib.util.spec_from_file_location("check_mlflow_server", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    requirements = module.extra_requirements()
    assert requirements and all("==" in r for r in requirements)
    assert any(r.startswith("psycopg2-binary==") for r in requirements)
