"""Text rules every stage shares: chat-message parsing, Unicode and whitespace normalisation.

One definition, so ingest (which stores prompts), the gold lookup of ``sft_oracle`` and ``audit``,
scoring and serving all see the same text; kept free of I/O so the rules can be unit- and
property-tested on plain strings.
"""

from __future__ import annotations

import json
import re
import unicodedata
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


_SPACE = re.compile(r"\s+")


def question_key(text: Any) -> str:
    """Join key of a question: NFKC, invisible characters removed, whitespace collapsed.

    Ingest keeps the first spelling of a problem and drops later variants (full-width digits,
    zero-width or no-break spaces), so a lookup by question must see through the same differences.
    """
    text = unicodedata.normalize("NFKC", str(text)).translate(_INVISIBLE)
    return _SPACE.sub(" ", text).strip()


def last_user_message(messages: list[dict[str, str]]) -> str | None:
    """The content of the last user turn (the request itself); None when there is none."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), None)


def as_messages(value: Any) -> list[dict[str, str]]:
    """Chat messages as plain ``[{role, content}]`` whatever the storage gave back.

    Parquet returns lists of structs as NumPy arrays of dicts; JSON may give a string.
    """
    if isinstance(value, str):
        value = json.loads(value)
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in list(value)]


def row_messages(
    value: Any, row: int, prompt_id: Any, where: str = "prompts"
) -> list[dict[str, str]]:
    """:func:`as_messages` for one row of ``prompts``; a malformed value names the row and field."""
    try:
        return as_messages(value)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"{where} row {row} (prompt_id={prompt_id!r}): field 'messages' is not a list of "
            f"{{role, content}}: {error!r}"
        ) from error
