"""The OpenAI-compatible HTTP API: ``/v1/chat/completions``, ``/v1/models``, ``/v1/feedback``,
``/health``.

Validation is pydantic's (FastAPI), reshaped into OpenAI-style error bodies with HTTP 400, so
clients written for OpenAI show our messages; only a failure of the server itself is a 5xx.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from taoflow.core.ids import derive_seed
from taoflow.generation import render_prompts
from taoflow.models import Policy
from taoflow.serving.batching import BatchQueue, GenerationRequest, QueueFullError, engine_runner
from taoflow.serving.config import ServeConfig
from taoflow.serving.streaming import StreamSink, sse_events
from taoflow.serving.tracing import TraceRecorder, log_user_feedback, trace_exists

logger = logging.getLogger(__name__)

# Request fields that would change the answer's meaning if silently ignored.
UNSUPPORTED_FIELDS = (
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "response_format",
    "stop",
    "logit_bias",
)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """An OpenAI chat message; list-of-text-parts content is joined into one string."""

    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[TextPart]

    def as_dict(self) -> dict[str, str]:
        content = (
            self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        )
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": content}


class ChatCompletionRequest(BaseModel):
    """The subset of OpenAI's chat-completion request this server honours."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    seed: int | None = None
    stream: bool = False
    user: str | None = Field(None, max_length=256)

    @model_validator(mode="after")
    def _check(self) -> ChatCompletionRequest:
        extra = self.model_extra or {}
        used = [k for k in UNSUPPORTED_FIELDS if extra.get(k) not in (None, [], {})]
        if used:
            raise ValueError(f"unsupported field(s): {', '.join(used)}")
        if extra.get("logprobs"):
            raise ValueError("unsupported field(s): logprobs")
        if self.messages[-1].role == "assistant":
            raise ValueError("the last message must not be from the assistant: nothing to answer")
        return self


class FeedbackRequest(BaseModel):
    """Thumbs up/down or a score in [0, 1] on a served answer, identified by its trace id."""

    model_config = ConfigDict(extra="forbid")
    trace_id: str = Field(min_length=1, max_length=128)
    thumbs: Literal["up", "down"] | None = None
    score: float | None = Field(None, ge=0.0, le=1.0)
    comment: str | None = Field(None, max_length=4000)
    user: str | None = Field(None, max_length=256)

    @field_validator("score")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("score must be a finite number")
        return value

    @model_validator(mode="after")
    def _one_signal(self) -> FeedbackRequest:
        if (self.thumbs is None) == (self.score is None):
            raise ValueError("give exactly one of 'thumbs' ('up'/'down') or 'score' (0..1)")
        return self

    @property
    def value(self) -> float:
        if self.thumbs is not None:
            return 1.0 if self.thumbs == "up" else 0.0
        return float(self.score)


def _error(status: int, message: str, kind: str, param: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(status_code=status, content=body, headers=headers)


class BodyLimitMiddleware:
    """Refuses bodies over ``max_bytes`` with 413 before any parsing (chunked bodies included)."""

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = _error(
            413,
            f"request body exceeds this server's limit of {self.max_bytes} bytes",
            "invalid_request_error",
        )
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await too_big(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await too_big(scope, receive, send)
                return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


_bearer = HTTPBearer(auto_error=False)


async def authorize(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Require ``Authorization: Bearer <token>`` when the app was given a token."""
    token = request.app.state.token
    if token is None:
        return
    given = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise HTTPException(401, "missing or invalid bearer token")


def _install_error_handlers(app: FastAPI) -> None:
    """Every error leaves in OpenAI's error shape, with a message that names the problem."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            if err.get("type") == "json_invalid":
                msg = f"request body is not valid JSON ({err.get('ctx', {}).get('error', msg)})"
                loc = ""
            elif not loc and err.get("type") in ("model_attributes_type", "dict_type"):
                msg = "request body must be a JSON object (Content-Type: application/json)"
            problems.append(f"{loc}: {msg}" if loc else msg)
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        if first.get("type") == "json_invalid":
            param = None
        return _error(400, "; ".join(problems), "invalid_request_error", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {
            400: "invalid_request_error",
            401: "authentication_error",
            404: "not_found_error",
            429: "rate_limit_error",
        }
        return _error(exc.status_code, str(exc.detail), kind.get(exc.status_code, "api_error"))

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("request failed", exc_info=exc)
        return _error(500, f"generation failed: {type(exc).__name__}", "server_error")


def _install_docs(app: FastAPI) -> None:
    """``/openapi.json``, ``/docs`` and ``/redoc``, each requiring the bearer token."""
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html

    guarded = {"dependencies": [Depends(authorize)], "include_in_schema": False}

    @app.get("/openapi.json", **guarded)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", **guarded)
    async def docs() -> Any:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="taoflow - Swagger UI")

    @app.get("/redoc", **guarded)
    async def redoc() -> Any:
        return get_redoc_html(openapi_url="/openapi.json", title="taoflow - ReDoc")


def _prepare(
    body: ChatCompletionRequest, policy: Policy, config: ServeConfig, counter: dict[str, int]
) -> tuple[GenerationRequest, dict, int]:
    """Request → (generation request, what the trace records, prompt tokens); 400 on limits."""
    messages = [m.as_dict() for m in body.messages]
    if body.max_tokens is not None and body.max_completion_tokens is not None:
        raise HTTPException(400, "give max_tokens or max_completion_tokens, not both")
    max_tokens = body.max_completion_tokens or body.max_tokens or config.default_max_tokens
    if max_tokens > config.max_tokens_cap:
        raise HTTPException(
            400, f"max_tokens {max_tokens} exceeds this server's limit {config.max_tokens_cap}"
        )
    if body.n > config.max_n:
        raise HTTPException(400, f"n {body.n} exceeds this server's limit {config.max_n}")
    prompt_tokens = len(render_prompts(policy, [messages])[0])
    if prompt_tokens > config.max_prompt_tokens:
        raise HTTPException(
            400,
            f"prompt is {prompt_tokens} tokens; this server accepts at most "
            f"{config.max_prompt_tokens}",
        )
    temperature = config.default_temperature if body.temperature is None else body.temperature
    top_p = config.default_top_p if body.top_p is None else body.top_p
    counter["requests"] += 1
    seed = body.seed if body.seed is not None else derive_seed(config.seed, counter["requests"])
    request = GenerationRequest(
        messages=messages,
        max_new_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        n=body.n,
        seed=seed,
    )
    recorded = {"messages": messages, "max_tokens": max_tokens, "temperature": temperature}
    recorded.update({"top_p": top_p, "n": body.n, "seed": body.seed})
    if body.model is not None:
        recorded["model"] = body.model
    return request, recorded, prompt_tokens


def _completion_response(
    result: Any,
    prompt_tokens: int,
    model_version: str,
    response_id: str | None = None,
    created: int | None = None,
) -> dict[str, Any]:
    """OpenAI's ``chat.completion`` body for one finished generation."""
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": s["completion"]},
            "finish_reason": s["finish_reason"],
            "logprobs": None,
        }
        for i, s in enumerate(result.samples)
    ]
    completion_tokens = sum(int(s["n_tokens"]) for s in result.samples)
    response: dict[str, Any] = {
        "id": response_id or f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": created if created is not None else int(time.time()),
        "model": model_version,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
    return response


async def _record(
    recorder: TraceRecorder | None,
    recorded: dict[str, Any],
    response: dict[str, Any],
    *,
    start_ns: int,
    result: Any,
    seed: int,
) -> str | None:
    """The answered request as one MLflow trace (its id), or None when capture is off or fails."""
    if recorder is None:
        return None
    try:
        return await run_in_threadpool(
            recorder.record,
            recorded,
            response,
            start_ns=start_ns,
            generate_start_ns=result.start_ns,
            generate_end_ns=result.end_ns,
            end_ns=time.time_ns(),
            attributes={"batch_size": result.batch_size, "seed": seed},
        )
    except Exception:  # noqa: BLE001 - an answer is never lost to a tracing failure
        logger.exception("could not record the trace of %s", response["id"])
        return None


def _model_card(model_version: str, created: int) -> dict[str, Any]:
    """OpenAI's ``model`` object for the one model this server answers with."""
    return {"id": model_version, "object": "model", "created": created, "owned_by": "taoflow"}


def create_app(
    policy: Policy,
    config: ServeConfig,
    *,
    model_version: str,
    token: str | None = None,
    recorder: TraceRecorder | None = None,
) -> FastAPI:
    """Build the app around a loaded policy. ``recorder=None`` switches usage capture off."""
    queue = BatchQueue(
        engine_runner(policy, token_budget=config.token_budget),
        max_queue=config.max_queue,
        max_batch_size=config.max_batch_size,
        window_s=config.batch_window_ms / 1000.0,
    )
    counter = {"requests": 0}
    started = int(time.time())
    finishing: set[asyncio.Task] = set()  # streams' trace writers, kept alive until done

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await queue.start()
        try:
            yield
        finally:
            if finishing:  # streams in flight: let them finish and record their traces
                await asyncio.wait(set(finishing), timeout=30)
            await queue.stop()
            for task in set(finishing):
                task.cancel()
            if recorder is not None:
                recorder.flush()

    # The schema and its UIs describe the API: served behind the same token as the API itself.
    app = FastAPI(
        title="taoflow",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.queue = queue
    app.state.recorder = recorder
    app.state.token = token
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_request_bytes)

    _install_error_handlers(app)
    _install_docs(app)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": model_version,
            "waiting": queue.waiting,
            "capture": recorder is not None,
        }

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(model_version, started)]}

    @app.get("/v1/models/{model_id:path}", dependencies=[Depends(authorize)])
    async def retrieve_model(model_id: str) -> dict[str, Any]:
        if model_id != model_version:
            raise HTTPException(
                404, f"model {model_id!r} is not served here ({model_version!r} is)"
            )
        return _model_card(model_version, started)

    async def finish(
        future: asyncio.Future, recorded: dict, prompt_tokens: int, start_ns: int, seed: int, **ids
    ) -> dict[str, Any]:
        """The full response of a finished generation, recorded as one trace (id added)."""
        result = await future
        response = _completion_response(result, prompt_tokens, model_version, **ids)
        response["trace_id"] = await _record(
            recorder, recorded, response, start_ns=start_ns, result=result, seed=seed
        )
        return response

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    async def chat_completions(body: ChatCompletionRequest) -> Any:
        start_ns = time.time_ns()
        request, recorded, prompt_tokens = _prepare(body, policy, config, counter)
        sink = None
        if body.stream:
            loop = asyncio.get_running_loop()
            sink = StreamSink(policy.tokenizer, request.n, request.temperature == 0, loop)
            request.on_token = sink.on_token
        try:
            future = queue.enqueue(request)
        except QueueFullError as err:
            raise HTTPException(429, str(err)) from None
        ids = {"response_id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time())}
        if sink is not None:
            future.add_done_callback(lambda _: sink.close())
            task = asyncio.create_task(
                finish(future, recorded, prompt_tokens, start_ns, request.seed, **ids)
            )
            finishing.add(task)
            task.add_done_callback(_forget(finishing))
            base = {"id": ids["response_id"], "created": ids["created"], "model": model_version}
            return StreamingResponse(sse_events(sink, task, base), media_type="text/event-stream")
        response = await finish(future, recorded, prompt_tokens, start_ns, request.seed, **ids)
        headers = {"X-Trace-Id": response["trace_id"]} if response["trace_id"] else {}
        return JSONResponse(response, headers=headers)

    @app.post("/v1/feedback", dependencies=[Depends(authorize)])
    async def feedback(body: FeedbackRequest) -> dict[str, Any]:
        if not await run_in_threadpool(trace_exists, body.trace_id):
            raise HTTPException(404, f"unknown trace_id {body.trace_id!r}")
        assessment_id, replaced = await run_in_threadpool(
            log_user_feedback,
            body.trace_id,
            body.value,
            body.user,
            body.comment,
            redact=config.capture.redact_pii,
        )
        return {
            "trace_id": body.trace_id,
            "assessment_id": assessment_id,
            "value": body.value,
            "replaced": replaced,
        }

    return app


def _forget(tasks: set[asyncio.Task]) -> Any:
    """A done-callback that drops a finished task and collects its error (logged where raised)."""

    def done(task: asyncio.Task) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("streamed request failed: %r", task.exception())

    return done
