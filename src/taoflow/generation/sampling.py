"""Per-row seeded sampling: a row's tokens depend on its seed, never on its batch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


class SeededSampler(LogitsProcessor):
    """Samples each row with its own generator and returns a one-hot score row.

    ``generate`` then runs greedy (``do_sample=False``), whose argmax picks exactly the token
    sampled here. Temperature / top-k / top-p are Hugging Face's own warpers; only the draw is
    ours, one uniform per row per step, by inverse CDF: the same row seed and the same
    distribution give the same token whatever the batch looks like.
    """

    def __init__(
        self,
        generators: Sequence[torch.Generator],
        temperature: float,
        top_p: float,
        top_k: int,
    ):
        # Generators, not seeds: their state carries over when a row's decoding is resumed.
        self.generators = list(generators)
        warpers: list[LogitsProcessor] = []
        if temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(temperature))
        if top_k and top_k > 0:
            warpers.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p))
        self.warpers = LogitsProcessorList(warpers)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        tokens = self.draw(scores)
        onehot = torch.full_like(scores, float("-inf"))
        return onehot.scatter_(1, tokens[:, None], 0.0)

    def draw(self, scores: torch.FloatTensor) -> torch.LongTensor:
        """One token per row from ``scores`` (raw logits, left unchanged)."""
        if scores.shape[0] != len(self.generators):
            raise RuntimeError(
                f"SeededSampler got {scores.shape[0]} rows for {len(self.generators)} generators."
            )
        probs = self.warpers(None, scores).float().softmax(dim=-1)
        cdf = probs.cumsum(dim=-1)
        draws = torch.cat([torch.rand(1, generator=g) for g in self.generators])
        target = (draws.to(cdf.device) * cdf[:, -1]).unsqueeze(1)
        # side="right": the first token whose cumulative mass exceeds the draw always has p > 0.
        tokens = torch.searchsorted(cdf, target, right=True).clamp_(max=scores.shape[-1] - 1)
        return tokens.squeeze(1)
