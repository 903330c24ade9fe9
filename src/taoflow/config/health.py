"""``health``: when a round counts as collapsed, and how a trained policy is probed."""

from __future__ import annotations

from pydantic import Field

from taoflow.config.base import StrictModel


class HealthThresholds(StrictModel):
    """Collapse rules of :func:`taoflow.health.detect_collapse`; ``None`` disables a rule."""

    min_prompts: int | None = Field(
        4, description="fewer prompt groups (≥2 candidates) than this: not judged"
    )
    agreement_rise: float | None = Field(
        0.25, description="consensus collapse: mean agreement rose by at least this over the base"
    )
    entropy_ratio: float | None = Field(
        0.5, description="... and entropy fell to at most this × the base's"
    )
    copy_share_rise: float | None = Field(
        0.25, description="share of answers copying a prompt span rose by at least this"
    )
    length_ratio_min: float | None = Field(
        0.4, description="mean completion length fell to at most this × the base's"
    )
    max_tokens_share_rise: float | None = Field(
        0.5, description="share of completions hitting the token cap rose by at least this"
    )
    off_support_share: float | None = Field(
        0.7, description="share of prompts whose majority answer the base never sampled"
    )
    trusted_rise: float | None = Field(
        0.05,
        description="with judge references: agreement with the judge's answers rose by at least "
        "this over the base's — a consensus collapse is overruled as sharpening toward the judge",
    )
    trusted_fall: float | None = Field(
        0.10,
        description="with judge references: agreement with the judge's answers fell by at least "
        "this below the base's — collapsed, whatever the label-free rules say",
    )


class ProbeParams(StrictModel):
    """Samples of a round's trained policy (and of the base), to judge it before the next round."""

    n_prompts: int = Field(32, ge=1, description="prompts probed, first by prompt_id of `split`")
    n_samples: int = Field(8, ge=1, description="samples per prompt: the voting group size")
    temperature: float = Field(0.8, ge=0, description="sampling temperature")
    max_new_tokens: int = Field(32, ge=1, description="completion token cap")
    split: str | None = Field("holdout", description="split probed; all prompts if it is empty")
    token_budget: int = Field(
        8192, ge=1, description="rows × (prompt + max_new_tokens) tokens per generate batch"
    )


class HealthParams(StrictModel):
    """Label-free health of each round: collapse thresholds and the policy probe."""

    enabled: bool = Field(
        True, description="false: verdicts are computed and logged, never acted on"
    )
    thresholds: HealthThresholds = HealthThresholds()
    probe: ProbeParams = ProbeParams()
    policy: str | None = Field(
        None,
        description="`kedro run --pipeline health` alone: the catalog entry of the policy it "
        "probes and judges against the base (e.g. round_2.policy); null: the last round's",
    )
