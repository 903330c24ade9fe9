"""``RewardModelDataset``: a sequence-classification reward model folder as one catalog dataset."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from taoflow.core.files import atomic_path

LINEAGE_FILE = "taoflow.json"


@dataclass
class RewardModel:
    """A reward model (``num_labels=1`` head), its tokenizer (with a chat template) and lineage."""

    model: Any
    tokenizer: Any
    lineage: dict[str, Any] = field(default_factory=dict)


class RewardModelDataset(AbstractDataset[RewardModel, RewardModel]):
    """Saved with ``save_pretrained`` (written beside, then swapped in); loads back in eval mode.

    The folder is what the ``reward_model`` scorer takes as ``model:``.
    """

    def __init__(self, path: str, metadata: dict[str, Any] | None = None):
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> RewardModel:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not self._exists():
            raise DatasetError(f"No reward model at {self._path}: run `kedro run -p reward_model`.")
        model = AutoModelForSequenceClassification.from_pretrained(self._path).eval()
        tokenizer = AutoTokenizer.from_pretrained(self._path)
        lineage_file = self._path / LINEAGE_FILE
        lineage = json.loads(lineage_file.read_text()) if lineage_file.is_file() else {}
        return RewardModel(model=model, tokenizer=tokenizer, lineage=lineage)

    def save(self, data: RewardModel) -> None:
        if not isinstance(data, RewardModel):
            raise DatasetError(
                f"RewardModelDataset at {self._path} expects a RewardModel, got {type(data).__name__}."
            )
        with atomic_path(self._path) as tmp:
            tmp.mkdir(parents=True)
            data.model.save_pretrained(tmp)
            data.tokenizer.save_pretrained(tmp)
            (tmp / LINEAGE_FILE).write_text(
                json.dumps(data.lineage, indent=2, sort_keys=True, default=str)
            )

    def _exists(self) -> bool:
        return (self._path / "config.json").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
