"""``audit``: label-free rewards checked against gold answers after the fact (read-only)."""

from __future__ import annotations

from pydantic import Field, field_validator

from taoflow.config.base import StrictModel


class AuditParams(StrictModel):
    """How the audit breaks pseudo-label accuracy down."""

    agreement_bins: list[float] = Field(
        [0.0, 0.25, 0.5, 0.75, 1.0],
        description="majority-vote agreement bucket edges, increasing, in [0, 1]",
    )

    @field_validator("agreement_bins")
    @classmethod
    def _increasing(cls, bins: list[float]) -> list[float]:
        if sorted(bins) != bins or len(bins) < 2:
            raise ValueError(f"agreement_bins must be increasing, got {bins}")
        return bins
