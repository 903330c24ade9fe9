"""``reward_model``: a Hugging Face sequence-classification reward model.

The chat (prompt messages + the candidate as the assistant turn) is rendered with the reward
model's own chat template, tokenized with right padding (positions then match an unpadded
forward pass, so a score does not depend on its batch-mates) and scored in batches.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from taoflow.core.lazy import inference_mode, lazy_module
from taoflow.scoring.base import ScoreResult

torch = lazy_module("torch")  # imported on first use (taoflow.core.lazy)


class RewardModelScorer:
    """Score = the model's logit for ``label_index`` (its only logit for a 1-label head).

    ``model``: a local folder or hub id (offline: from the cache); ``taoflow`` model references
    (``tiny-random``, ``embedded``) are not reward models. ``max_length`` truncates long chats
    from the left so the completion's end is always seen.
    """

    def __init__(
        self,
        *,
        model: str,
        batch_size: int = 8,
        max_length: int = 1024,
        label_index: int = 0,
        dtype: str = "float32",
        device: str = "cpu",
        name: str = "reward_model",
    ):
        if not model:
            raise ValueError(f"{name}: set 'model' to a reward model folder or hub id")
        self.name_or_path = str(model)
        self.batch_size = int(batch_size)
        self.max_length = int(max_length)
        self.label_index = int(label_index)
        self.dtype = dtype
        self.device = device
        self.name = name
        self._model: Any = None
        self._tokenizer: Any = None

    def _load(self) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.name_or_path)
        if tokenizer.chat_template is None:
            raise ValueError(f"{self.name}: reward model {self.name_or_path} has no chat template")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "right"
        tokenizer.truncation_side = "left"
        model = AutoModelForSequenceClassification.from_pretrained(
            self.name_or_path, dtype=getattr(torch, self.dtype)
        )
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        if self.label_index >= model.config.num_labels:
            raise ValueError(
                f"{self.name}: label_index {self.label_index} but the model has "
                f"{model.config.num_labels} label(s)"
            )
        self._model, self._tokenizer = model.to(self.device).eval(), tokenizer

    def chats(self, frame: pd.DataFrame) -> list[str]:
        """The rendered conversation each candidate is judged in."""
        if self._tokenizer is None:
            self._load()
        return [
            self._tokenizer.apply_chat_template(
                [*messages, {"role": "assistant", "content": completion}], tokenize=False
            )
            for messages, completion in zip(frame["messages"], frame["completion"], strict=True)
        ]

    @inference_mode
    def score(self, frame: pd.DataFrame) -> ScoreResult:
        texts = self.chats(frame)
        # Batches of similar length waste little compute on padding; scores go back in order.
        order = np.argsort([len(t) for t in texts], kind="stable")
        scores = np.zeros(len(texts))
        starts = range(0, len(texts), self.batch_size)
        for start in tqdm(starts, desc=self.name, unit="batch", disable=len(starts) < 4):
            rows = order[start : start + self.batch_size]
            batch = self._tokenizer(
                [texts[i] for i in rows],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                add_special_tokens=False,  # the chat template already placed them
                return_tensors="pt",
            ).to(self.device)
            logits = self._model(**batch).logits
            scores[rows] = logits[:, self.label_index].float().cpu().numpy()
        return ScoreResult(scores=scores)
