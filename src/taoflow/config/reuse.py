"""``reuse``: work done once. A training (yardstick or TAO round) whose inputs did not change is
loaded back.

The cache key hashes everything that decides the result (base weights and lineage, training
examples, resolved trainer settings, seed, the training code and library versions), so any
change that could alter the weights misses; ``force`` retrains and overwrites the cached copy.
"""

from __future__ import annotations

from pydantic import Field

from taoflow.config.base import StrictModel


class ReuseParams(StrictModel):
    """Whether unchanged trainings are reused, where cached results live, and the override."""

    enabled: bool = Field(True, description="reuse a cached training whose key matches")
    force: bool = Field(False, description="retrain even on a match and overwrite the cached copy")
    cache_dir: str = Field(
        "data/06_models/cache", description="cached trainings, one folder per stage and key"
    )
    keep: int = Field(
        2, ge=1, description="cached trainings kept per stage, the most recently used first"
    )
