"""``CredentialsDataset``: hands Kedro credentials to a node.

Kedro injects credentials only into datasets, yet the ``llm_judge`` scorer (called from a node)
needs an API key. This read-only dataset loads the credentials entry it is bound to
(``credentials: <key>`` in the catalog) and never shows them in logs or ``repr``.
"""

from __future__ import annotations

from typing import Any

from kedro.io import AbstractDataset, DatasetError


class CredentialsDataset(AbstractDataset[None, dict[str, Any]]):
    """Loads the bound credentials as a dict (``{}`` when none are bound)."""

    def __init__(
        self, credentials: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None
    ):
        self._credentials = dict(credentials or {})
        self.metadata = metadata

    def load(self) -> dict[str, Any]:
        return dict(self._credentials)

    def save(self, data: None) -> None:
        raise DatasetError("CredentialsDataset is read-only")

    def _exists(self) -> bool:
        return True

    def _describe(self) -> dict[str, Any]:
        return {"keys": sorted(self._credentials)}  # names only, never values
