"""The ``score:`` block (``conf/base/parameters_score.yml``): which scorers judge candidates.

Each built-in scorer type has its own typed options (a misspelt option is an error that names
it); a custom ``pkg.module:Class`` entry passes its extra keys to the class unchecked. Only the
options a user sets reach a scorer: the defaults shown here are the scorer's own.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    create_model,
    model_validator,
)

from taoflow.config.base import StrictModel
from taoflow.config.shared import AnswerParams

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
COMMON_KEYS = ("name", "type", "weight")


class ScorerParams(StrictModel):
    """Keys every scorer entry has; ``reward = Σ weight · score_<name>``."""

    name: str | None = Field(None, description="Column score_<name>; null: the type.")
    type: str
    weight: float = 1.0

    @property
    def scorer_name(self) -> str:
        return str(self.name or self.type)

    def options(self) -> dict[str, Any]:
        """The scorer's own keyword arguments: what the entry sets beyond name/type/weight."""
        return self.model_dump(exclude_unset=True, exclude=set(COMMON_KEYS))

    def as_entry(self) -> dict[str, Any]:
        """The flat ``{name, type, weight, **options}`` mapping the scorer factory builds from."""
        return {"name": self.scorer_name, "type": self.type, "weight": self.weight} | self.options()


class MajorityVoteParams(ScorerParams):
    type: Literal["majority_vote"] = "majority_vote"
    answer: AnswerParams | None = Field(None, description="Extractor; null: the task's.")
    ties: Literal["none", "all", "first"] = "none"
    min_agreement: float = 0.0
    agree_value: float = 1.0
    disagree_value: float = 0.0
    no_answer_value: float = 0.0
    no_majority_value: float = 0.0


class CrossViewParams(MajorityVoteParams):
    """The vote's knobs, compared with the other views' majority."""

    type: Literal["cross_view"] = "cross_view"  # type: ignore[assignment]
    views: dict[str, str] | None = Field(
        None, description="strategy → view name; null: each strategy is its own view"
    )


class SemanticConsensusParams(ScorerParams):
    type: Literal["semantic_consensus"] = "semantic_consensus"
    model: str | None = Field(None, description="Embedding model; null: the packaged one.")
    text: Literal["completion", "answer"] = "completion"
    batch_size: int = 64
    singleton_value: float = 0.0
    device: str = "cpu"


class RewardModelParams(ScorerParams):
    type: Literal["reward_model"] = "reward_model"
    model: str
    batch_size: int = 8
    max_length: int = 1024
    label_index: int = 0
    dtype: str = "float32"
    device: str = "cpu"


class VerifierParams(ScorerParams):
    type: Literal["verifier"] = "verifier"
    function: str = Field(description="pkg.module:function(completion, row) -> score")
    timeout_s: float = 5.0
    workers: int = 2
    failure_value: float = 0.0
    start_timeout_s: float = 60.0
    sandbox: Literal["bwrap", "none"] = Field(
        "bwrap", description="bwrap: bubblewrap isolation; none: the code runs unsandboxed."
    )
    memory_mb: int = Field(4096, ge=0, description="address-space limit per worker; 0: none")
    file_size_mb: int = Field(64, ge=0, description="largest file a worker may write; 0: none")
    max_processes: int = Field(64, ge=0, description="processes per worker's user; 0: none")
    scratch_mb: int = Field(256, ge=0, description="bwrap: size of the private /tmp; 0: none")


class LLMJudgeParams(ScorerParams):
    type: Literal["llm_judge"] = "llm_judge"
    backend: Literal["http", "transformers"] = "http"
    url: str | None = None
    model: str | None = None
    credentials_key: str | None = None
    rubric: str | None = Field(None, description="null: the judge's built-in rubric.")
    system_prompt: str | None = Field(None, description="null: the judge's built-in one.")
    score_pattern: str | None = Field(None, description="null: the judge's built-in regex.")
    min_score: float = 1.0
    max_score: float = 10.0
    normalize: bool = True
    failure_value: float = 0.0
    max_new_tokens: int = 32
    timeout_s: float = 60.0
    retries: int = 2
    concurrency: int = 4
    batch_size: int = 8
    cache_dir: str = "data/06_models"


class JudgeScorerParams(ScorerParams):
    """Agreement with the ``judge`` stage's answers (or its verdicts), given to it as data."""

    type: Literal["judge"] = "judge"
    answer: AnswerParams | None = Field(None, description="Extractor; null: the task's.")
    compare: Literal["auto", "exact", "semantic"] = Field(
        "auto", description="auto: semantic when the task's extractor is 'full'."
    )
    scale_by_confidence: bool = Field(False, description="Multiply by the judge's vote share.")
    agree_value: float = 1.0
    disagree_value: float = 0.0
    missing_value: float = Field(0.0, description="No judge data for the candidate.")
    model: str | None = Field(None, description="Embedding model; null: the packaged one.")
    batch_size: int = 64
    device: str = "cpu"


class FormatParams(ScorerParams):
    type: Literal["format"] = "format"
    answer: AnswerParams | None = None
    require_answer: bool = True
    penalize_truncation: bool = True
    pattern: str | None = None
    max_chars: int | None = None


class LengthPenaltyParams(ScorerParams):
    type: Literal["length_penalty"] = "length_penalty"
    answer: AnswerParams | None = None
    target_tokens: int = 64
    max_tokens: int = 256
    truncated_no_answer_value: float = -1.0


class CustomScorerParams(ScorerParams):
    """A user scorer ``pkg.module:Class`` (or function): extra keys are its own, passed as given."""

    model_config = ConfigDict(extra="allow", frozen=True, protected_namespaces=())

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


BUILTIN_PARAMS: dict[str, type[ScorerParams]] = {
    "majority_vote": MajorityVoteParams,
    "cross_view": CrossViewParams,
    "semantic_consensus": SemanticConsensusParams,
    "reward_model": RewardModelParams,
    "verifier": VerifierParams,
    "llm_judge": LLMJudgeParams,
    "judge": JudgeScorerParams,
    "format": FormatParams,
    "length_penalty": LengthPenaltyParams,
}


def _scorer_entry(value: Any) -> ScorerParams:
    """A raw entry → the model of its type (built-in by name, else a Python path)."""
    if isinstance(value, ScorerParams):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"a scorer entry must be a mapping, got {value!r}")
    kind = value.get("type") or value.get("name")
    if not kind:
        raise ValueError(f"scorer entry {value!r} has neither 'type' nor 'name'")
    if kind in BUILTIN_PARAMS:
        return BUILTIN_PARAMS[kind].model_validate({**value, "type": kind})
    if ":" in str(kind):
        return CustomScorerParams.model_validate({**value, "type": kind})
    raise ValueError(
        f"scorer {value.get('name') or kind!r}: unknown type {kind!r}; use one of "
        f"{', '.join(sorted(BUILTIN_PARAMS))} or a Python path 'pkg.module:Class'"
    )


# Every key any built-in scorer accepts: where an error message looks up a misspelt key's
# nearest valid name (the entry's own model is chosen per entry, at validation time).
_AnyScorerKeys = create_model(  # type: ignore[call-overload]
    "AnyScorerKeys",
    __base__=StrictModel,
    **{key: (Any, None) for model in BUILTIN_PARAMS.values() for key in model.model_fields},
)

ScorerEntry = Annotated[
    _AnyScorerKeys,
    PlainValidator(_scorer_entry),
    PlainSerializer(lambda entry: entry.model_dump(mode="json")),
]


class AdvantageParams(StrictModel):
    """How reward becomes advantage within each prompt's group of candidates."""

    normalize_std: bool = Field(True, description="Divide by the group's std (GRPO).")
    eps: float = Field(1e-4, description="Added to the std to avoid dividing by zero.")
    zero_signal_tol: float = Field(
        1e-9, description="A group whose rewards span at most this carries no signal."
    )


class ScoreParams(StrictModel):
    """Scorers (run in order) and the advantage computation."""

    scorers: list[ScorerEntry] = Field(min_length=1)
    advantage: AdvantageParams = AdvantageParams()
    shard_size: int = Field(
        32, ge=1, description="prompt groups per score shard (a killed run resumes by shard)"
    )

    @model_validator(mode="after")
    def _names_are_unique_identifiers(self) -> ScoreParams:
        names = [entry.scorer_name for entry in self.scorers]  # type: ignore[attr-defined]
        for i, name in enumerate(names):
            if not _NAME.match(name):
                raise ValueError(
                    f"score.scorers[{i}]: name {name!r} must be an identifier (it becomes a column)"
                )
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(
                f"score.scorers: duplicate scorer names {duplicates}; give each a name"
            )
        return self
