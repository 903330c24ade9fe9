"""The base of every parameter model, and one-line errors that name the key and a suggestion."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

# Top-level YAML blocks → their model. A key outside this table is a typo (or a block nobody
# reads); `serve` is read by the CLI (taoflow.serving.config) and validated there too.
BLOCKS: dict[str, str] = {
    "seed": "taoflow.config.shared:Seed",
    "model": "taoflow.config.shared:ModelParams",
    "task": "taoflow.config.shared:TaskParams",
    "tao": "taoflow.config.tao:TaoParams",
    # Not typed yet: accepted as they are until their stage's model lands.
    "ingest": "taoflow.config.base:UntypedBlock",
    "generate": "taoflow.config.base:UntypedBlock",
    "score": "taoflow.config.base:UntypedBlock",
    "train": "taoflow.config.train:TrainParams",
    "health": "taoflow.config.base:UntypedBlock",
    "evaluate": "taoflow.config.base:UntypedBlock",
    "audit": "taoflow.config.base:UntypedBlock",
    "sft_oracle": "taoflow.config.sft_oracle:SftOracleParams",
    "reward_model": "taoflow.config.reward_model:RewardModelParams",
    "serve": "taoflow.config.base:UntypedBlock",
}


class ParameterError(ValueError):
    """A parameter the user set is unknown or invalid; the message is one line, fit to print."""


class StrictModel(BaseModel):
    """Unknown keys are errors (a typo must never fall back to a default silently); frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class UntypedBlock(BaseModel):
    """Placeholder for a block whose model has not landed: any keys pass."""

    model_config = ConfigDict(extra="allow")


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
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        current = _model_of(fields[part].annotation)
    fields = getattr(current, "model_fields", None)
    return list(fields) if fields else []


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
    if target is UntypedBlock:
        return value
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
