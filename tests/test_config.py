"""One home per knob: every block typed, every typo stopped with its path and a suggestion."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from kedro.config import OmegaConfigLoader
from kedro.framework.session import KedroSession
from pydantic import BaseModel

from taoflow.config.base import (
    BLOCKS,
    ParameterError,
    model_class,
    validate_block,
    validate_parameters,
)
from taoflow.settings import CONFIG_LOADER_ARGS

PROJECT = Path(__file__).resolve().parents[1]
ENVS = sorted(p.name for p in (PROJECT / "conf").iterdir() if p.is_dir() and p.name != "base")


def _parameters(env: str | None) -> dict[str, Any]:
    loader = OmegaConfigLoader(conf_source=str(PROJECT / "conf"), env=env, **CONFIG_LOADER_ARGS)
    return dict(loader["parameters"])


@pytest.mark.parametrize("env", ENVS)
def test_every_shipped_environment_validates(env):
    validate_parameters(_parameters(env))


def test_every_block_has_a_model():
    for block in BLOCKS:
        assert model_class(block) is not None, block


def test_unknown_top_level_block_names_the_nearest_one():
    with pytest.raises(ParameterError, match=r"unknown parameter 'trian'; did you mean 'train'\?"):
        validate_parameters({"trian": {"algorithm": "dpo"}})


def _mapping_paths(value: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every path to a mapping inside a block's YAML value (where a typo could hide)."""
    found = [path] if isinstance(value, dict) else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += _mapping_paths(item, (*path, str(key)))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _mapping_paths(item, (*path, str(i)))
    return found


def _typo_cases() -> list[tuple[str, tuple[str, ...], str]]:
    """(block, path to a mapping, an existing key there to misspell) over the base config."""
    params = _parameters(None)
    cases = []
    for block, value in params.items():
        if not (isinstance(model_class(block), type) and issubclass(model_class(block), BaseModel)):
            continue
        for path in _mapping_paths(value):
            mapping = value
            for part in path:
                mapping = mapping[int(part)] if isinstance(mapping, list) else mapping[part]
            keys = sorted(k for k in mapping if len(str(k)) > 3)
            if keys and not (path and path[-1] in FREE_FORM):
                cases.append((block, path, str(keys[0])))
    return cases


# Mappings whose keys are user-chosen names, not knobs (strategy names, file sources), or another
# library's options (simulate.pool.config: the reasoning-gym dataset's, checked when it is built).
FREE_FORM = {"strategies", "files", "config"}


@pytest.mark.parametrize(("block", "path", "key"), _typo_cases())
def test_a_misspelt_key_anywhere_stops_with_its_path_and_a_suggestion(block, path, key):
    value = copy.deepcopy(_parameters(None)[block])
    mapping = value
    for part in path:
        mapping = mapping[int(part)] if isinstance(mapping, list) else mapping[part]
    typo = key[:-1] + ("x" if key[-1] != "x" else "y")
    mapping[typo] = mapping.pop(key)
    dotted = ".".join([block, *path, typo])
    with pytest.raises(ParameterError) as error:
        validate_block(block, value)
    message = str(error.value)
    assert "\n" not in message
    assert f"'{dotted}'" in message
    assert f"did you mean '{key}'" in message


def test_a_wrong_type_names_the_key():
    params = _parameters(None)
    with pytest.raises(ParameterError, match=r"parameter 'tao.rounds'"):
        validate_block("tao", {**params["tao"], "rounds": "many"})


def test_a_runtime_typo_stops_the_session_before_any_node(kedro_project):
    with (
        pytest.raises(ParameterError, match=r"unknown parameter 'ingest.max_prompt'"),
        KedroSession.create(
            project_path=kedro_project, env="smoke", runtime_params={"ingest": {"max_prompt": 5}}
        ) as session,
    ):
        session.run(pipeline_name="ingest")
    assert not (kedro_project / "data" / "03_primary" / "prompts.parquet").exists()


def _node_names(pipeline) -> set[str]:
    return {node.name for node in pipeline.nodes}


def test_viz_and_run_build_the_same_graph_for_the_same_env(kedro_project):
    from kedro.framework.project import pipelines
    from kedro_viz.integrations.kedro.data_loader import load_data

    with KedroSession.create(project_path=kedro_project) as session:
        session.load_context()
        one_round = _node_names(pipelines["__default__"])
    _, viz_pipelines, _ = load_data(kedro_project, env="smoke")
    with KedroSession.create(project_path=kedro_project, env="smoke") as session:
        session.load_context()
        run_graph = _node_names(pipelines["__default__"])
    assert _node_names(viz_pipelines["__default__"]) == run_graph
    assert any(name.startswith("round_2.") for name in run_graph)  # conf/smoke: two rounds
    assert not any(name.startswith("round_2.") for name in one_round)


@pytest.mark.parametrize("env", [None, "smoke", "two_rounds", "judge"])
def test_every_dataset_between_nodes_is_declared(kedro_project, env):
    """No undeclared MemoryDataset: the graph can be cut into separately scheduled tasks."""
    from kedro.framework.project import pipelines

    with KedroSession.create(project_path=kedro_project, env=env) as session:
        context = session.load_context()
        catalog = context.catalog
        undeclared = set()
        for pipeline in pipelines.values():
            inner = {
                ds
                for node in pipeline.nodes
                for ds in node.outputs
                if not ds.startswith("params:") and ds != "parameters"
            }
            undeclared |= {ds for ds in inner if ds not in catalog}
    assert not undeclared, (
        f"datasets passed between nodes but not in the catalog: {sorted(undeclared)}"
    )
