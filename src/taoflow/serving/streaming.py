"""Token-by-token answers: ``stream: true`` as OpenAI's ``chat.completion.chunk`` events.

The batching worker generates as usual; each streaming request carries a :class:`StreamSink`
whose ``on_token`` runs on the generating thread (through
:class:`taoflow.generation.streaming.RowStreamer` on the decoding loop), turns the token into
text and hands it to the event loop, where :func:`sse_events` sends it at once. When the
generation ends, the engine's own result fills in whatever text was still held back, so the
streamed pieces add up to exactly the answer a non-streamed request gets; the trace is recorded
once from that result, by a task that finishes even if the client goes away mid-stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from taoflow.generation.streaming import TextDeltas

logger = logging.getLogger(__name__)


class StreamSink:
    """Per-request text deltas: filled on the generating thread, read on the event loop.

    Greedy decoding runs once per conversation (sample 0); its text goes to every choice.
    """

    def __init__(self, tokenizer: Any, n: int, greedy: bool, loop: asyncio.AbstractEventLoop):
        self.deltas = [TextDeltas(tokenizer) for _ in range(n)]
        self.greedy = greedy
        self.loop = loop
        self.queue: asyncio.Queue[tuple[int, str] | None] = asyncio.Queue()

    def on_token(self, sample: int, token: int) -> None:
        """Called by the engine on its thread for each decoded token."""
        for index in range(len(self.deltas)) if self.greedy else (sample,):
            text = self.deltas[index].push(token)
            if text:
                self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, text))

    def close(self) -> None:
        """No more tokens (called on the event loop once the generation has ended)."""
        self.queue.put_nowait(None)


def _event(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


async def sse_events(
    sink: StreamSink, finishing: asyncio.Future, base: dict[str, Any]
) -> AsyncIterator[str]:
    """The stream: a role chunk per choice, content chunks as tokens come, finish chunks, usage.

    ``finishing`` resolves to the full ``chat.completion`` response (with ``trace_id``) once the
    generation has ended; ``base`` holds the response's ``id``, ``created`` and ``model``.
    """
    base = {**base, "object": "chat.completion.chunk"}

    def chunk(index: int, delta: dict[str, Any], finish_reason: str | None = None) -> str:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _event({**base, "choices": [choice]})

    for index in range(len(sink.deltas)):
        yield chunk(index, {"role": "assistant", "content": ""})
    while (item := await sink.queue.get()) is not None:
        yield chunk(item[0], {"content": item[1]})
    try:
        response = await asyncio.shield(finishing)
    except Exception as err:  # noqa: BLE001 - the stream has started: report in-band
        message = f"generation failed: {type(err).__name__}"
        yield _event({"error": {"message": message, "type": "server_error", "code": 500}})
        return
    for choice in response["choices"]:
        rest = sink.deltas[choice["index"]].rest(choice["message"]["content"])
        if rest:
            yield chunk(choice["index"], {"content": rest})
        if sink.deltas[choice["index"]].sent != choice["message"]["content"]:
            logger.warning("streamed text of %s differs from its final answer", base["id"])
        yield chunk(choice["index"], {}, choice["finish_reason"])
    yield _event(
        {**base, "choices": [], "usage": response["usage"], "trace_id": response["trace_id"]}
    )
    yield _event("[DONE]")
