"""A stage run alone (``kedro run --pipeline evaluate``) writes under its own folders.

The composed run (``kedro run``, ``--pipeline tao``) writes its reports to ``data/08_reporting``
and its model outputs to ``data/07_model_output``; the notebook and README read them there. A
stage run alone reads its inputs from the same places (a composed run's policies, prompts,
evaluation) but writes what it produces under ``<layer>/stages/<pipeline>/`` — e.g.
``data/08_reporting/stages/evaluate/eval_report.md`` — so it never overwrites the composed run's
reports and two runs never mix in one folder. The project's context applies this to the catalog
(:meth:`taoflow.context.TaoflowContext._get_catalog`); only datasets the stage's nodes write move.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

COMPOSED = ("__default__", "tao")
# Layers whose outputs are a run's own results; other layers (prompts, models) are what a stage
# alone is run to produce for the stages after it.
STAGE_LAYERS = ("data/07_model_output/", "data/08_reporting/")
PATH_KEYS = ("filepath", "path")


def stage_name(pipeline_names: Iterable[str] | None) -> str | None:
    """The stage-alone name of a run of ``pipeline_names`` (None: the composed run)."""
    names = [n for n in (pipeline_names or []) if n]
    if not names or any(n in COMPOSED for n in names):
        return None
    return "+".join(sorted(set(names)))


def stage_path(path: str, stage: str | None) -> str:
    """``data/<layer>/x`` → ``data/<layer>/stages/<stage>/x`` for a result layer; else ``path``."""
    if stage is None:
        return path
    for layer in STAGE_LAYERS:
        if path.startswith(layer):
            return f"{layer}stages/{stage}/{path[len(layer) :]}"
    return path


def _moved(config: Any, stage: str) -> Any:
    if isinstance(config, dict):
        return {
            key: stage_path(value, stage)
            if key in PATH_KEYS and isinstance(value, str)
            else _moved(value, stage)
            for key, value in config.items()
        }
    return config


def stage_catalog(
    conf_catalog: dict[str, Any], outputs: Iterable[str], stage: str | None
) -> dict[str, Any]:
    """``conf_catalog`` with each of ``outputs`` written under the stage's own folders.

    An output declared through a dataset factory (``{namespace}.health``) gets its own explicit
    entry (the factory resolved for that name, moved), so inputs the same factory matches keep
    reading the composed run's files.
    """
    if stage is None:
        return conf_catalog
    from kedro.io.catalog_config_resolver import CatalogConfigResolver

    resolver = CatalogConfigResolver(copy.deepcopy(conf_catalog))
    out = dict(conf_catalog)
    for name in sorted(outputs):
        if name.startswith("params:") or name == "parameters":
            continue
        if name in conf_catalog:
            config = conf_catalog[name]
        elif resolver.match_dataset_pattern(name) is not None:
            config = resolver.resolve_pattern(name)
        else:
            continue  # a memory dataset
        moved = _moved(copy.deepcopy(config), stage)
        if moved != config:
            out[name] = moved
    return out


__all__ = ["COMPOSED", "stage_catalog", "stage_name", "stage_path"]
