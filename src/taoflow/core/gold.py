"""Gold answers for usage prompts (``usage_gold``): validated table and lookup by question.

Labels never reach TAO's training: they feed the labeled yardstick (``sft_oracle``) and the
after-the-fact ``audit`` of label-free rewards, which both find a prompt's gold answer here.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np
import pandas as pd

from taoflow.core.answers import answers_match, normalize_answer
from taoflow.core.text import question_key


def format_gold_answer(answer: Any) -> str:
    """The gold answer as the task asks for it: a number in canonical form, other text stripped."""
    text = str(answer).strip()
    try:
        number = Decimal(text.replace(",", "").replace("−", "-").rstrip("."))
    except InvalidOperation:
        return text
    return str(normalize_answer(text)) if number.is_finite() else text


def gold_table(usage_gold: pd.DataFrame, gold_path: str | None = None) -> pd.Series:
    """``usage_gold`` rows → formatted gold answer by question key, after validating every row.

    A row without a question or answer, or one question with two different answers, is an error
    naming the file, line and field: a wrong oracle would silently mislead the comparison.
    """
    where = f"usage_gold ({gold_path})" if gold_path else "usage_gold"
    if not isinstance(usage_gold, pd.DataFrame):
        raise TypeError(f"{where} must load as a table, got {type(usage_gold).__name__}")
    missing = [c for c in ("question", "answer") if c not in usage_gold.columns]
    if missing:
        raise ValueError(
            f"{where} has no column(s) {missing}; each line needs "
            f'{{"question", "answer"}}; columns: {list(usage_gold.columns)}'
        )
    rows = usage_gold.reset_index(drop=True)
    for field in ("question", "answer"):
        empty = rows[field].isna() | (rows[field].astype(str).str.strip() == "")
        if empty.any():
            lines = [int(i) + 1 for i in np.flatnonzero(empty.to_numpy())[:5]]
            raise ValueError(f"{where}: line(s) {lines} have an empty {field!r}")
    keys = rows["question"].map(question_key)
    answers = rows["answer"].map(format_gold_answer)
    table: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for line, (key, answer) in enumerate(zip(keys, answers, strict=True), start=1):
        if key in table and not answers_match(table[key], answer):
            raise ValueError(
                f"{where}: line {line} gives 'answer' {answer!r} for the question of line "
                f"{first_line[key]}, which says {table[key]!r}: {rows['question'].iloc[line - 1]!r}"
            )
        table.setdefault(key, answer)
        first_line.setdefault(key, line)
    return pd.Series(table, dtype=object)


def find_gold(
    text: str, gold: pd.Series, keys_by_length: list[str], match: str
) -> tuple[str | None, str | None, str]:
    """(question key, answer, how) for a user message; the reason in ``how`` when none fits."""
    key = question_key(text)
    if key in gold.index:
        return key, gold[key], "exact"
    if match == "exact":
        return None, None, "no gold answer for this question (match: exact)"
    # A message that wraps the question ("Café question: <question>"): the longest gold
    # question it contains, unless two different questions of that length both fit.
    found = [k for k in keys_by_length if k in key]
    if not found:
        return None, None, "no gold answer: no gold question in the user message"
    longest = [k for k in found if len(k) == len(found[0])]
    if len(longest) > 1:
        return None, None, f"ambiguous gold: the user message contains {len(longest)} questions"
    return found[0], gold[found[0]], "embedded"
