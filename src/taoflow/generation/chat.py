"""Chat templating into token ids with message content kept as text.

A chat template spells role markers (``<|im_start|>``, ``<|im_end|>``) as text and the tokenizer
turns them into special tokens. Tokenising the whole rendered string would do the same to a
marker a user typed inside a message, letting them forge a system or assistant turn. Here the
template's own text is tokenised as usual and each message's content with
``split_special_tokens=True``, so a typed marker stays plain characters. A conversation whose
content holds no special-token text takes the plain path unchanged, so normal prompts render to
exactly the ids they always did.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

# Private-use code points: never produced by a template and never typed by accident.
_MARK = "\ue000taoflow-content-{}\ue001"


def special_token_texts(tokenizer: Any) -> tuple[str, ...]:
    """Every string the tokenizer would turn into one special token (longest first)."""
    texts: set[str] = set(getattr(tokenizer, "all_special_tokens", None) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    texts.update(str(tok) for tok in decoder.values() if getattr(tok, "special", True))
    return tuple(sorted((t for t in texts if t), key=len, reverse=True))


def holds_special_text(conversation: Sequence[dict], specials: Sequence[str]) -> bool:
    """Whether any message's content contains a special token's text."""
    return any(s in str(m.get("content", "")) for m in conversation for s in specials)


def _plain_ids(tokenizer: Any, conversation: Sequence[dict]) -> list[int]:
    text = tokenizer.apply_chat_template(
        list(conversation), add_generation_prompt=True, tokenize=False
    )
    # The template already spells out BOS/role markers as text; adding specials would double them.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _segmented_ids(tokenizer: Any, conversation: Sequence[dict]) -> list[int] | None:
    """Template text tokenised normally, content with specials split; None if the template
    does not place each content exactly once (then the caller neutralises the content)."""
    marks = [_MARK.format(i) for i in range(len(conversation))]
    masked = [{**m, "content": marks[i]} for i, m in enumerate(conversation)]
    text = tokenizer.apply_chat_template(masked, add_generation_prompt=True, tokenize=False)
    found = re.findall("|".join(re.escape(m) for m in marks), text)
    if sorted(found) != sorted(marks):
        return None
    ids: list[int] = []
    pos = 0
    for match in re.finditer("|".join(re.escape(m) for m in marks), text):
        if match.start() > pos:
            ids += tokenizer(text[pos : match.start()], add_special_tokens=False)["input_ids"]
        content = str(conversation[marks.index(match.group())].get("content", ""))
        if content:
            ids += tokenizer(content, add_special_tokens=False, split_special_tokens=True)[
                "input_ids"
            ]
        pos = match.end()
    if pos < len(text):
        ids += tokenizer(text[pos:], add_special_tokens=False)["input_ids"]
    return ids


def _strip_specials(conversation: Sequence[dict], specials: Sequence[str]) -> list[dict]:
    out = []
    for message in conversation:
        content = str(message.get("content", ""))
        for special in specials:
            content = content.replace(special, "")
        out.append({**message, "content": content})
    return out


def render_chat_ids(
    tokenizer: Any, conversation: Sequence[dict], specials: Sequence[str] | None = None
) -> list[int]:
    """Token ids of ``conversation`` chat-templated with the assistant turn opened.

    Special-token text inside message content is tokenised as ordinary characters; a template
    that rewrites content so it cannot be located gets that text removed instead.
    """
    specials = special_token_texts(tokenizer) if specials is None else specials
    if not holds_special_text(conversation, specials):
        return _plain_ids(tokenizer, conversation)
    ids = _segmented_ids(tokenizer, conversation)
    if ids is None:
        return _plain_ids(tokenizer, _strip_specials(conversation, specials))
    return ids
