"""Graph-shaping settings (``tao.rounds``…), read from the configuration of the running context.

Kedro builds pipelines (``register_pipelines()``, no arguments) before nodes see ``params:``, so
settings that change the graph itself must reach the registry another way. The project's context
class (:class:`taoflow.context.TaoflowContext`) hands its validated parameters over when it is
created — for ``kedro run``, ``kedro viz`` and a ``KedroSession`` alike, hooks or not — and
invalidates Kedro's cached pipelines, so the graph always follows the env the session was given.
Outside any context (``kedro registry list``), Kedro's own default applies: ``KEDRO_ENV`` or
``local`` over ``base``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from taoflow.config.base import validate_parameters

_context_params: dict[str, Any] = {}


def use_context_parameters(raw: dict[str, Any]) -> None:
    """Validate ``raw`` and make it the configuration pipelines are built from from now on."""
    from kedro.framework.project import pipelines

    validated = validate_parameters(raw)
    _context_params.clear()
    _context_params.update(validated)
    pipelines.configure(pipelines._pipelines_module)  # rebuild for this configuration


def _default_loader() -> Any:
    from kedro.framework.project import settings

    conf_source = Path(settings.CONF_SOURCE)
    if not conf_source.is_absolute():
        conf_source = Path.cwd() / conf_source
    return settings.CONFIG_LOADER_CLASS(
        conf_source=str(conf_source), env=os.environ.get("KEDRO_ENV"), **settings.CONFIG_LOADER_ARGS
    )


def _default_parameters() -> dict[str, Any]:
    return validate_parameters(_default_loader()["parameters"])


def graph_config(section: str) -> dict[str, Any]:
    """TRANSITIONAL (removed when evaluate and sft_oracle stop reading the catalog at build time)."""
    try:
        return dict(_default_loader()[section])
    except Exception:  # noqa: BLE001
        return {}


def graph_parameters() -> dict[str, Any]:
    """Validated parameter blocks (model instances by block name) to build the graph from."""
    return dict(_context_params) if _context_params else _default_parameters()
