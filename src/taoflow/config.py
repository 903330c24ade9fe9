"""Parameters that shape the pipeline graph itself (e.g. the number of TAO rounds).

Kedro builds pipelines before nodes see ``params:``, so graph-shaping settings are read from
the project's config loader: the one of the running session (captured by
:class:`taoflow.hooks.PipelineConfigHook` when the context is created — it already carries
``--env`` and ``--params``), or, outside a session (``kedro registry list``, kedro-viz without a
session), a fresh loader for ``KEDRO_ENV`` (default ``local`` over ``base``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

_session_loader: dict[str, Any] = {}


def remember_config_loader(loader: Any) -> None:
    """Called when a session's context is created, before its pipelines are registered."""
    _session_loader["loader"] = loader


def _loader():
    """The running session's config loader, else a fresh one for the current environment."""
    loader = _session_loader.get("loader")
    if loader is None:
        from kedro.framework.project import settings

        conf_source = Path(settings.CONF_SOURCE)
        if not conf_source.is_absolute():
            conf_source = Path.cwd() / conf_source
        loader = settings.CONFIG_LOADER_CLASS(
            conf_source=str(conf_source),
            env=os.environ.get("KEDRO_ENV"),
            **settings.CONFIG_LOADER_ARGS,
        )
    return loader


def graph_parameters() -> dict[str, Any]:
    """The project's resolved parameters, for decisions taken while building pipelines."""
    return graph_config("parameters")


def graph_config(section: str) -> dict[str, Any]:
    """Any resolved config section (``catalog``, ``credentials``…) for graph-time decisions.

    Same loader as :func:`graph_parameters` (the running session's, else a fresh one); ``{}``
    when the section is missing (e.g. no conf folder, no credentials file). Used to ask whether
    a catalog dataset exists before wiring it.
    """
    try:
        return dict(_loader()[section])
    except Exception:  # noqa: BLE001 - a missing section means nothing configured
        return {}
