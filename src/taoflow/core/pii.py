"""PII redaction: e-mails, card-like numbers and phone numbers become placeholders.

Shared by ingest (before anything is stored or hashed), serving traces and feedback, so every
path that stores user text applies the same rules.
"""

from __future__ import annotations

import re
from collections import Counter


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
_PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}"  # international: +44 20 7946 0958
    r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}"  # (555) 123-4567
    r"|\d{3}[.-]\d{3}[.-]\d{4}"  # 555-123-4567 (separators required: '5 - 3' stays arithmetic)
    r")(?!\w)"
)
PII_PLACEHOLDERS = {"email": "[EMAIL]", "card": "[CARD]", "phone": "[PHONE]"}


def redact_pii(text: str, kinds: list[str] | tuple[str, ...]) -> tuple[str, Counter]:
    """Replace emails, card-like numbers (Luhn-valid, 13-19 digits) and phone numbers.

    Cards go before phones so a card number is never half-eaten as a phone number. Returns the
    text and a count per kind.
    """
    counts: Counter = Counter()
    unknown = set(kinds) - set(PII_PLACEHOLDERS)
    if unknown:
        raise ValueError(f"ingest.pii.kinds: unknown kinds {sorted(unknown)}")

    def _sub(kind: str, pattern: re.Pattern, text: str, check=None) -> str:
        def repl(match: re.Match) -> str:
            if check is not None and not check(match.group(0)):
                return match.group(0)
            counts[kind] += 1
            return PII_PLACEHOLDERS[kind]

        return pattern.sub(repl, text)

    if "email" in kinds:
        text = _sub("email", _EMAIL, text)
    if "card" in kinds:
        text = _sub("card", _CARD, text, lambda s: _luhn_ok(re.sub(r"\D", "", s)))
    if "phone" in kinds:
        text = _sub("phone", _PHONE, text, lambda s: 7 <= len(re.sub(r"\D", "", s)) <= 15)
    return text, counts
