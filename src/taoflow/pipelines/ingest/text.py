"""Text-level rules of ingestion: message parsing, Unicode/whitespace normalisation, PII redaction.

Kept apart from the nodes so the same rules can be unit- and property-tested on plain strings.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from typing import Any

ROLE_ALIASES = {
    "system": "system",
    "developer": "system",  # OpenAI's newer name for the system turn
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "ai": "assistant",
}

# Characters that render as nothing and only make equal prompts hash differently.
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"))
_HSPACE = re.compile(r"[^\S\n]+")  # any whitespace except newline (tabs, NBSP, thin spaces...)
_BLANK_LINES = re.compile(r"\n{3,}")


class RowError(ValueError):
    """A row that cannot become a prompt; ``reason`` is the rejects category."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def normalize_text(text: str) -> str:
    """NFC, invisible characters dropped, horizontal whitespace collapsed, lines right-stripped.

    Leading indentation of a line is kept (code prompts depend on it); runs of blank lines are
    capped at one. The result is what gets stored, hashed and tokenised.
    """
    text = unicodedata.normalize("NFC", text).translate(_INVISIBLE)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = []
    for line in text.split("\n"):
        body = line.lstrip()
        indent = "".join("    " if c == "\t" else " " for c in line[: len(line) - len(body)])
        lines.append(indent + _HSPACE.sub(" ", body).rstrip())
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def dedup_key(messages: list[dict[str, str]]) -> str:
    """Coarser identity than ``prompt_id``: NFKC, case-folded, all whitespace collapsed.

    Two rows that differ only by full-width digits, case or spacing are the same request.
    """
    parts = []
    for message in messages:
        text = unicodedata.normalize("NFKC", message["content"]).casefold()
        parts.append(f"{message['role']}\x1f{' '.join(text.split())}")
    return "\x1e".join(parts)


def _content_text(content: Any, index: int) -> str:
    """OpenAI content: a string, or a list of parts of which only text parts are usable."""
    if isinstance(content, str):
        return content
    if isinstance(content, list | tuple):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type", "text") == "text":
                texts.append(str(part.get("text", "")))
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise RowError(
                    "invalid_messages", f"messages[{index}] has a non-text part ({kind})"
                )
        return "\n".join(texts)
    if content is None:
        return ""
    raise RowError(
        "invalid_messages", f"messages[{index}].content is {type(content).__name__}, not text"
    )


def coerce_messages(value: Any) -> list[dict[str, str]]:
    """Any storage's idea of a chat (list, NumPy array of dicts, JSON string) → ``[{role, content}]``."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise RowError("invalid_messages", f"messages is not valid JSON: {err.msg}") from err
    if hasattr(value, "tolist") and not isinstance(value, list):  # NumPy array from parquet
        value = value.tolist()
    if not isinstance(value, list | tuple):
        raise RowError("invalid_messages", f"messages is {type(value).__name__}, not a list")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise RowError("invalid_messages", f"messages[{i}] is not an object")
        if "role" not in message or "content" not in message:
            raise RowError("invalid_messages", f"messages[{i}] lacks 'role' or 'content'")
        role = ROLE_ALIASES.get(str(message["role"]).strip().lower())
        if role is None:
            raise RowError(
                "invalid_messages", f"messages[{i}] has unsupported role {message['role']!r}"
            )
        messages.append({"role": role, "content": _content_text(message["content"], i)})
    return messages


def normalize_messages(
    messages: list[dict[str, str]],
    system_prompt: str | None = None,
    system_prompt_mode: str = "missing",
) -> tuple[list[dict[str, str]], int]:
    """Normalise contents, drop empty turns and trailing assistant turns, apply the fixed system prompt.

    Returns the messages and how many trailing assistant turns were removed (generation writes
    those). ``system_prompt_mode``: ``missing`` adds ``system_prompt`` only to rows without a
    system turn; ``replace`` drops the row's system turns and uses ``system_prompt``.
    """
    out = [{"role": m["role"], "content": normalize_text(m["content"])} for m in messages]
    out = [m for m in out if m["content"]]
    dropped = 0
    while out and out[-1]["role"] == "assistant":
        out.pop()
        dropped += 1
    if not any(m["role"] == "user" for m in out):
        raise RowError("empty", "no non-blank user turn")
    if out[-1]["role"] != "user":
        raise RowError("invalid_messages", f"last turn is {out[-1]['role']!r}, not 'user'")
    fixed = normalize_text(system_prompt) if system_prompt else ""
    if fixed:
        if system_prompt_mode == "replace":
            out = [m for m in out if m["role"] != "system"]
        if system_prompt_mode in ("missing", "replace") and out[0]["role"] != "system":
            out.insert(0, {"role": "system", "content": fixed})
        elif system_prompt_mode not in ("missing", "replace"):
            raise ValueError(
                f"ingest.system_prompt_mode must be 'missing' or 'replace', got {system_prompt_mode!r}"
            )
    return out, dropped


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
