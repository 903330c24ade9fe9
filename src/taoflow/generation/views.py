"""Prompt views (pure): semantically equivalent rewrites of a prompt (``task.views``).

A model that answers a question and its rewrite alike is more likely right than one whose
answer moves with the wording; the ``cross_view`` scorer rewards that agreement. A view only
changes the last user turn; a prompt a view cannot rewrite is left as it is and reported, so
its candidates answer the original wording (never a half-rewritten one).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from taoflow.config.shared import ViewParams

# A chain of signed terms: "3 - 5 + 12", "-2 + 7.5": + and - only, spaced on both sides (so
# dates and ranges such as 2024-01-05 or 3-5 are never read as sums).
_NUMBER = r"\d+(?:\.\d+)?"
_CHAIN = re.compile(rf"(?<![\w.])-?{_NUMBER}(?:[ \t]+[+\-][ \t]+{_NUMBER})+(?!\w|\.\d)")
_TERM = re.compile(rf"([+\-]?)[ \t]*({_NUMBER})")
# Next to the chain, these would bind tighter or extend it: reordering would change the value.
_BLOCKING = set("+-*/×÷^()%")


def reorder_terms(text: str) -> str | None:
    """``text`` with its one ``a + b - c`` chain's signed terms reversed, else None.

    None when the text holds no chain, several chains, or a chain an operator of higher
    precedence (``*``, ``/``, ``^``, brackets) or another sign touches: the sum would change.
    The sentence around the expression is kept character for character.
    """
    matches = list(_CHAIN.finditer(text))
    if len(matches) != 1:
        return None
    match = matches[0]
    before, after = text[: match.start()].rstrip(), text[match.end() :].lstrip()
    if (before and before[-1] in _BLOCKING) or (after and after[0] in _BLOCKING):
        return None
    terms = [
        ("-" if sign == "-" else "+", number) for sign, number in _TERM.findall(match.group(0))
    ]
    reordered = terms[::-1]
    first_sign, first = reordered[0]
    parts = [f"-{first}" if first_sign == "-" else first]
    parts += [f"{sign} {number}" for sign, number in reordered[1:]]
    return text[: match.start()] + " ".join(parts) + text[match.end() :]


def rewrite_question(text: str, view: ViewParams) -> str | None:
    """The view's rewrite of one user turn, or None when this view cannot rewrite it."""
    if view.kind == "reorder_terms":
        return reorder_terms(text)
    return str(view.template).replace("{question}", text)


def view_conversation(
    messages: Sequence[dict[str, str]], view: ViewParams | None
) -> tuple[list[dict[str, str]], bool]:
    """(messages with the last user turn rewritten, whether it was); the input is not modified.

    ``view`` None, no user turn, or a turn the view cannot rewrite: the messages as they are.
    """
    out = [dict(m) for m in messages]
    if view is None:
        return out, False
    users = [i for i, m in enumerate(out) if m.get("role") == "user"]
    if not users:
        return out, False
    rewritten = rewrite_question(str(out[users[-1]]["content"]), view)
    if rewritten is None:
        return out, False
    out[users[-1]]["content"] = rewritten
    return out, True
