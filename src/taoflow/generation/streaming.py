"""Token streaming out of the generation engine, for answers that are read while they are written.

:class:`RowStreamer` is a ``transformers`` streamer (``BaseStreamer``) handed to each
``model.generate`` call of the engine's decoding loop: it sees every decoding step's tokens for
the whole batch and forwards each live row's token, up to (not including) its stop token, to a
callback. It only observes, so what is generated is exactly what the engine returns without it.

:class:`TextDeltas` turns one sequence's token ids into text increments whose concatenation is
the engine's final ``completion``: it decodes like the engine does and holds back a trailing
partial character or whitespace, which a later token may still change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from transformers.generation.streamers import BaseStreamer

TokenCallback = Callable[[int, int], None]


class RowStreamer(BaseStreamer):
    """Forwards each decoding step's token of every live row as ``on_token(row, token_id)``.

    ``rows`` maps the batch position of ``generate``'s input to the caller's row number; a row
    is silent after its stop token (``generate`` pads finished rows). The first ``put`` of a
    ``generate`` call is its prompt and is skipped.
    """

    def __init__(self, rows: Sequence[int], stops: set[int], on_token: TokenCallback):
        self.rows = list(rows)
        self.stops = stops
        self.on_token = on_token
        self.done = [False] * len(self.rows)
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        steps = value.reshape(len(self.rows), -1).tolist()
        for k, tokens in enumerate(steps):
            for token in tokens:
                if self.done[k]:
                    break
                if token in self.stops:
                    self.done[k] = True
                    break
                self.on_token(self.rows[k], int(token))

    def end(self) -> None:
        """Nothing to flush: every token was forwarded as it came."""


class TextDeltas:
    """Incremental detokenizer for one sequence: ``push(token_id)`` returns the new text, if any."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.sent = ""

    def push(self, token_id: int) -> str:
        self.tokens.append(token_id)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        # A trailing U+FFFD is a character whose bytes are still arriving; a trailing space may
        # still be cleaned up by the next token (" ." → "."). Both wait.
        stable = text.rstrip("\ufffd").rstrip(" ")
        if len(stable) <= len(self.sent) or not stable.startswith(self.sent):
            return ""
        delta, self.sent = stable[len(self.sent) :], stable
        return delta

    def rest(self, completion: str) -> str:
        """What is still to send so that everything sent equals ``completion`` (the final text)."""
        if completion.startswith(self.sent):
            delta, self.sent = completion[len(self.sent) :], completion
            return delta
        return ""
