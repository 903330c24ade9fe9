"""``PolicyDataset``: a model folder (weights, tokenizer, optional adapter, lineage) as one dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from taoflow.cards import write_policy_card
from taoflow.core.files import atomic_path
from taoflow.models import Policy, load_policy, save_policy


class PolicyDataset(AbstractDataset[Policy, Policy]):
    """Saves a :class:`~taoflow.models.Policy` with ``save_pretrained``; loads it back in eval mode.

    The folder also gets a Hugging Face model card (``README.md``, :mod:`taoflow.cards`) built
    from the policy's lineage, so it can be pushed to a hub as it is (``taoflow push-to-hub``).

    The folder is written next to its final place and swapped in at the end, so a killed save
    never leaves a half-written policy that a later round would load.
    """

    def __init__(self, path: str, dtype: str = "float32", metadata: dict[str, Any] | None = None):
        self._path = Path(path)
        self._dtype = dtype
        self.metadata = metadata

    def load(self) -> Policy:
        if not self._exists():
            raise DatasetError(f"No policy at {self._path}: run the stage that produces it first.")
        return load_policy(str(self._path), dtype=self._dtype)

    def save(self, data: Policy) -> None:
        if not isinstance(data, Policy):
            raise DatasetError(
                f"PolicyDataset at {self._path} expects a Policy, got {type(data).__name__}."
            )
        with atomic_path(self._path) as tmp:
            save_policy(data, tmp)
            write_policy_card(tmp, data.lineage)

    def _exists(self) -> bool:
        return (self._path / "config.json").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "dtype": self._dtype}
