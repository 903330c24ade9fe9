"""``TokenizerDataset``: the base model's tokenizer alone, so ingest counts tokens without weights."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from kedro.io import AbstractDataset, DatasetError

from taoflow.core.files import atomic_path
from taoflow.models import load_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase
else:  # resolvable by Kedro's type-hint checks without importing transformers at start-up
    PreTrainedTokenizerBase = Any


class TokenizerDataset(AbstractDataset[PreTrainedTokenizerBase, PreTrainedTokenizerBase]):
    """A tokenizer folder (``save_pretrained``); loads ready for chat templating.

    ``prepare_base`` writes it once per run beside ``base_model``; ingest reads it instead of
    resolving the model reference itself (which, for the embedded model, means converting it).
    """

    def __init__(self, path: str, metadata: dict[str, Any] | None = None):
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> PreTrainedTokenizerBase:
        if not self._exists():
            raise DatasetError(
                f"No tokenizer at {self._path}: run `kedro run --pipelines prepare_base,ingest` "
                f"(prepare_base writes it) first."
            )
        return load_tokenizer(str(self._path))

    def save(self, data: PreTrainedTokenizerBase) -> None:
        with atomic_path(self._path) as tmp:
            data.save_pretrained(tmp)

    def _exists(self) -> bool:
        return (self._path / "tokenizer_config.json").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
