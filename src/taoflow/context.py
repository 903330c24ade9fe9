"""The project's Kedro context: validates parameters and shapes the graph on creation."""

from __future__ import annotations

from typing import Any

from attrs import define
from kedro.framework.context import KedroContext

from taoflow.config.graph import use_context_parameters


@define(slots=False)
class TaoflowContext(KedroContext):
    """A :class:`KedroContext` whose configuration is checked before anything runs.

    Every parameter block is validated as soon as the context exists (a typo stops ``kedro run``,
    ``kedro viz`` and notebooks alike, with one line naming the key), and the pipelines are built
    from this context's env and runtime parameters.
    """

    def __attrs_post_init__(self) -> None:
        use_context_parameters(self._raw_parameters())

    def _raw_parameters(self) -> dict[str, Any]:
        try:
            return dict(self.config_loader["parameters"])
        except Exception:  # noqa: BLE001 - Kedro itself reports a missing config folder
            return {}
