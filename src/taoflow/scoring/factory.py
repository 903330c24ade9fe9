"""Scorer factory: a scorer entry of the ``score`` block (``type``) → a scorer object.

``type`` is a built-in name (``majority_vote``, ``format``, ...) or a Python path
``pkg.module:Attr`` to a user class (instantiated with the entry's extra keys) or a plain
function ``f(frame, **params) -> ScoreResult | list[float]``. Built-ins are imported lazily, so
configuring only ``majority_vote`` never imports sentence-transformers.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

import pandas as pd

from taoflow.scoring.base import ScoreResult

BUILTIN_SCORERS: dict[str, str] = {
    "majority_vote": "taoflow.scoring.majority:MajorityVoteScorer",
    "cross_view": "taoflow.scoring.cross_view:CrossViewScorer",
    "semantic_consensus": "taoflow.scoring.semantic:SemanticConsensusScorer",
    "reward_model": "taoflow.scoring.reward_model:RewardModelScorer",
    "verifier": "taoflow.scoring.verifier:VerifierScorer",
    "llm_judge": "taoflow.scoring.judge:LLMJudgeScorer",
    "judge": "taoflow.scoring.judge_reward:JudgeScorer",
    "format": "taoflow.scoring.heuristics:FormatScorer",
    "length_penalty": "taoflow.scoring.heuristics:LengthPenaltyScorer",
}

# Keys of a scorer entry that belong to the combination, not to the scorer's constructor.
RESERVED_KEYS = ("name", "type", "weight")


def import_object(path: str) -> Any:
    """Resolve ``pkg.module:attr`` (dots after the colon walk attributes)."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{path!r} is not a Python path of the form 'pkg.module:Name'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"cannot import module {module_name!r} (from {path!r}): {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ImportError(f"module {module_name!r} has no attribute {attr!r}") from exc
    return obj


class FunctionScorer:
    """Adapts a plain function ``f(frame, **params)`` to the scorer interface."""

    def __init__(self, function: Callable[..., Any], params: dict[str, Any]):
        self.function = function
        self.params = params

    def score(self, frame: pd.DataFrame) -> ScoreResult | list[float]:
        return self.function(frame, **self.params)


def _accepts(cls: Any, name: str) -> bool:
    try:
        parameters = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )


def build_scorer(
    entry: dict[str, Any],
    task: dict[str, Any],
    credentials: dict[str, Any] | None = None,
    references: Any = None,
) -> Any:
    """One scorer from its config entry ``{name, type, weight, **params}``.

    A class gets ``name``, ``task``, ``credentials`` and ``references`` (data another stage
    made for scoring, e.g. the judge's answers) when its constructor accepts them.
    """
    kind = entry.get("type") or entry.get("name")
    if not kind:
        raise ValueError(f"scorer entry {entry!r} has neither 'type' nor 'name'")
    name = str(entry.get("name") or kind)
    target = BUILTIN_SCORERS.get(kind, kind)
    if ":" not in target:
        raise ValueError(
            f"scorer {name!r}: unknown type {kind!r}; use one of "
            f"{', '.join(sorted(BUILTIN_SCORERS))} or a Python path 'pkg.module:Class'"
        )
    obj = import_object(target)
    params = {k: v for k, v in entry.items() if k not in RESERVED_KEYS}
    if inspect.isclass(obj):
        context = {
            "name": name,
            "task": task,
            "credentials": credentials or {},
            "references": references,
        }
        for key, value in context.items():
            if key not in params and _accepts(obj, key):
                params[key] = value
        try:
            scorer = obj(**params)
        except TypeError as exc:
            raise TypeError(f"scorer {name!r} ({target}): bad parameters {params}: {exc}") from exc
    elif callable(obj):
        scorer = FunctionScorer(obj, params)
    else:
        raise TypeError(f"scorer {name!r}: {target} is neither a class nor a function")
    if not callable(getattr(scorer, "score", None)):
        raise TypeError(f"scorer {name!r}: {target} has no score(frame) method")
    return scorer
