"""Final-answer extraction and normalisation, shared by scoring (majority vote) and evaluation.

One extractor config drives both stages, so "the answer" means the same thing when it is voted
on without labels and when it is checked against a reference.

Extractor config (a dict, e.g. from ``params:task.answer``):
    kind: last_number | first_number | boxed | regex | json_field | full
    pattern: the regex, for ``kind: regex`` (group 1 if present, else the whole match)
    field: the key, for ``kind: json_field``
"""

from __future__ import annotations

import json
import re
import unicodedata
from decimal import Decimal, InvalidOperation, localcontext
from typing import Any

_NUMBER = re.compile(r"(?<![\w.])[-−]?\d{1,3}(?:,\d{3})+(?:\.\d+)?|(?<![\w.])[-−]?\d+(?:\.\d+)?")
_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")

EXTRACTORS = ("last_number", "first_number", "boxed", "regex", "json_field", "full")


def _numbers(text: str) -> list[str]:
    return _NUMBER.findall(text)


def numbers_in(text: str | None) -> list[str]:
    """Every number in ``text``, normalised: the operands a copied answer could come from."""
    found = (normalize_answer(n) for n in _numbers(text or ""))
    return [n for n in found if n is not None]


def extract_answer(text: str | None, config: Any = None) -> str | None:
    """The final answer in ``text`` per ``config`` (default: last number), or None if there is none.

    ``config`` is the task's ``answer`` block: a mapping or its typed model.
    """
    if not text:
        return None
    if hasattr(config, "model_dump"):
        config = config.model_dump(exclude_none=True)
    config = config or {}
    kind = config.get("kind", "last_number")
    if kind == "last_number":
        found = _numbers(text)
        return found[-1] if found else None
    if kind == "first_number":
        found = _numbers(text)
        return found[0] if found else None
    if kind == "boxed":
        found = _BOXED.findall(text)
        return found[-1].strip() if found else None
    if kind == "regex":
        pattern = config.get("pattern")
        if not pattern:
            raise ValueError("answer extractor 'regex' needs a 'pattern'")
        matches = list(re.finditer(pattern, text, flags=re.DOTALL))
        if not matches:
            return None
        match = matches[-1]
        return (match.group(1) if match.groups() else match.group(0)).strip()
    if kind == "json_field":
        key = config.get("field")
        if not key:
            raise ValueError("answer extractor 'json_field' needs a 'field'")
        start, end = text.find("{"), text.rfind("}")
        if start < 0 or end <= start:
            return None
        try:
            value = json.loads(text[start : end + 1]).get(key)
        except (json.JSONDecodeError, AttributeError):
            return None
        return None if value is None else str(value)
    if kind == "full":
        return text.strip() or None
    raise ValueError(f"unknown answer extractor {kind!r}; choose one of {', '.join(EXTRACTORS)}")


def normalize_answer(answer: str | None) -> str | None:
    """Canonical form for comparison: numbers compare numerically ("1,000" == "1000.0"), text by NFC/case/space."""
    if answer is None:
        return None
    text = unicodedata.normalize("NFC", str(answer)).strip().replace("−", "-")
    candidate = text.replace(",", "").rstrip(".")
    try:
        number = Decimal(candidate)
    except InvalidOperation:
        return " ".join(text.lower().split()).rstrip(".") or None
    if not number.is_finite():
        return candidate.lower()
    # Enough precision for every digit (a model may ramble 40 of them) and "f" notation
    # (1E+3 → "1000"): nothing rounded, nothing raised.
    if abs(number.adjusted()) > 1000:  # "1e999999": not spelled out as a million digits
        return str(number.normalize()).lower()
    with localcontext() as context:
        context.prec = max(context.prec, len(number.as_tuple().digits))
        return format(number.normalize(), "f")


def answers_match(predicted: str | None, reference: str | None) -> bool:
    """True when both normalise to the same non-empty answer."""
    left, right = normalize_answer(predicted), normalize_answer(reference)
    return left is not None and left == right
