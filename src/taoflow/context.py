"""The project's Kedro context: validates parameters and shapes the graph on creation."""

from __future__ import annotations

import logging
from typing import Any

from attrs import define
from kedro.framework.context import KedroContext

from taoflow.config.graph import use_context_parameters
from taoflow.config.stages import stage_catalog, stage_name

logger = logging.getLogger(__name__)


@define(slots=False)
class TaoflowContext(KedroContext):
    """A :class:`KedroContext` whose configuration is checked before anything runs.

    Every parameter block is validated as soon as the context exists (a typo stops ``kedro run``,
    ``kedro viz`` and notebooks alike, with one line naming the key), and the pipelines are built
    from this context's env and runtime parameters. A run of single stages
    (``kedro run --pipeline evaluate``) writes its results under their own folders
    (:mod:`taoflow.config.stages`).
    """

    def __attrs_post_init__(self) -> None:
        from kedro.framework.project import pipelines

        # KedroSession.run names the requested pipelines just before it creates the context;
        # rebuilding the graph below forgets them.
        self._requested_pipelines = getattr(pipelines, "_requested_pipelines", None)
        use_context_parameters(self._raw_parameters())

    def _raw_parameters(self) -> dict[str, Any]:
        try:
            return dict(self.config_loader["parameters"])
        except Exception:  # noqa: BLE001 - Kedro itself reports a missing config folder
            return {}

    @property
    def stage(self) -> str | None:
        """The stage-alone name of this context's run (None: the composed run)."""
        return stage_name(getattr(self, "_requested_pipelines", None))

    def _get_catalog(self, *args: Any, **kwargs: Any) -> Any:
        stage = self.stage
        if stage is None:
            return super()._get_catalog(*args, **kwargs)
        from kedro.framework.project import pipelines

        outputs: set[str] = set()
        for name in self._requested_pipelines or []:
            if name in pipelines:
                outputs |= pipelines[name].all_outputs()
        loader = self.config_loader
        loader["catalog"] = stage_catalog(loader["catalog"], outputs, stage)
        logger.info("Stage run alone: its results go under data/08_reporting/stages/%s/", stage)
        try:
            return super()._get_catalog(*args, **kwargs)
        finally:
            del loader["catalog"]
