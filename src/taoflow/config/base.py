"""The base of every parameter model, and one-line errors that name the key and a suggestion."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterable, Mapping
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from taoflow.errors import UserError

# Top-level YAML blocks → their model. A key outside this table is a typo (or a block nobody
# reads); `serve` is read by the CLI (taoflow.serving.config) and validated there too.
BLOCKS: dict[str, str] = {
    "seed": "taoflow.config.shared:Seed",
    "model": "taoflow.config.shared:ModelParams",
    "task": "taoflow.config.shared:TaskParams",
    "tao": "taoflow.config.tao:TaoParams",
    "ingest": "taoflow.config.ingest:IngestParams",
    "generate": "taoflow.config.generate:GenerateParams",
    "score": "taoflow.config.score:ScoreParams",
    "train": "taoflow.config.train:TrainParams",
    "health": "taoflow.config.health:HealthParams",
    "evaluate": "taoflow.config.evaluate:EvaluateParams",
    "promote": "taoflow.config.promote:PromoteParams",
    "audit": "taoflow.config.audit:AuditParams",
    "sft_oracle": "taoflow.config.sft_oracle:SftOracleParams",
    "judge_distill": "taoflow.config.judge_distill:JudgeDistillParams",
    "reward_model": "taoflow.config.reward_model:RewardModelParams",
    "judge": "taoflow.config.judge:JudgeParams",
    "reuse": "taoflow.config.reuse:ReuseParams",
    "launch": "taoflow.config.launch:LaunchParams",
    "memory": "taoflow.config.memory:MemoryParams",
    "serve": "taoflow.serving.config:ServeConfig",
    "simulate": "taoflow.config.simulate:SimulateParams",
}


class ParameterError(UserError, ValueError):
    """A parameter the user set is unknown or invalid; the message is one line, fit to print."""


class StrictModel(BaseModel):
    """Unknown keys are errors (a typo must never fall back to a default silently); frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


def suggestion(name: str, valid: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the nearest valid name, else the list of valid names."""
    valid = sorted(str(v) for v in valid)
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{close[0]}'?"
    shown = ", ".join(valid[:12]) + (", ..." if len(valid) > 12 else "")
    return f"; valid keys: {shown}" if valid else ""


def unknown_key_message(path: str, name: str, valid: Iterable[str]) -> str:
    """The one message every unknown-key check in the project prints."""
    return f"unknown parameter '{path}'{suggestion(name, valid)}"


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Valid keys of the (nested) model reached by ``loc``; [] where it is not a model."""
    current: Any = model
    key_next = False  # the previous field maps names to models: this part is a key, not a field
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        if key_next:
            key_next = False
            continue
        fields = getattr(current, "model_fields", None)
        by_key = {(f.alias or n): f for n, f in (fields or {}).items()}
        if part not in by_key:
            return []
        current = _model_of(by_key[part].annotation)
        key_next = _is_mapping(by_key[part].annotation)
    fields = getattr(current, "model_fields", None)
    return [field.alias or name for name, field in fields.items()] if fields else []


def _is_mapping(annotation: Any) -> bool:
    """Whether an annotation is ``dict[...]`` (or ``dict[...] | None``)."""
    if get_origin(annotation) in (dict, Mapping):
        return True
    return any(_is_mapping(arg) for arg in get_args(annotation) if arg is not type(None))


def _model_of(annotation: Any) -> Any:
    """The pydantic model inside an annotation (``X``, ``X | None``, ``list[X]``, ``dict[str, X]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def format_validation_error(prefix: str, model: Any, error: ValidationError) -> str:
    """The first error of ``error`` as one line: the full dotted key, what is wrong, a hint."""
    first = error.errors()[0]
    loc = tuple(first.get("loc", ()))
    path = ".".join([prefix, *(str(p) for p in loc)]) if prefix else ".".join(map(str, loc))
    more = len(error.errors()) - 1
    tail = f" (+{more} more)" if more else ""
    if first.get("type") == "extra_forbidden":
        valid = _fields_at(model, loc[:-1])
        return unknown_key_message(path, str(loc[-1]), valid) + tail
    message = str(first.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    value = first.get("input")
    shown = "" if isinstance(value, Mapping | list) else f" (got {value!r})"
    return f"parameter '{path}': {message}{shown}{tail}"


def model_class(block: str) -> Any:
    """The model (or scalar type) registered for a top-level block."""
    module, _, name = BLOCKS[block].partition(":")
    return getattr(importlib.import_module(module), name)


def validate_block(block: str, value: Any) -> Any:
    """One block's raw value → its validated instance; :class:`ParameterError` on any problem."""
    target = model_class(block)
    is_model = isinstance(target, type) and issubclass(target, BaseModel)
    try:
        return TypeAdapter(target).validate_python({} if value is None and is_model else value)
    except ValidationError as error:
        model = target if is_model else BaseModel
        raise ParameterError(format_validation_error(block, model, error)) from None


def validate_parameters(params: Mapping[str, Any]) -> dict[str, Any]:
    """Validate every block of the resolved parameters; unknown blocks are errors too.

    Returns the validated instances by block, so callers can read graph-shaping settings
    (``tao.rounds``) from the same validated source the nodes get.
    """
    out: dict[str, Any] = {}
    for key, value in params.items():
        if key not in BLOCKS:
            raise ParameterError(unknown_key_message(key, key, BLOCKS))
        out[key] = validate_block(key, value)
    return out
