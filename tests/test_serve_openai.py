"""The official ``openai`` client against ``taoflow serve``: model listing and real streaming."""

from __future__ import annotations

import pytest

openai = pytest.importorskip("openai")

from taoflow.serving import TraceRecorder, build_config, create_app  # noqa: E402
from taoflow.serving.server import BackgroundServer  # noqa: E402

TOKEN = "openai-client-token"
MODEL = "tiny-openai-v1"
QUESTION = [{"role": "user", "content": "What is 12 + 30? Explain."}]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    import mlflow

    previous = mlflow.get_tracking_uri()
    uri = f"sqlite:///{tmp_path_factory.mktemp('openai_store') / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(previous)


@pytest.fixture(scope="module")
def served(tiny_policy, store):
    """A live server on 127.0.0.1 (token on, capture on) and an official client for it."""
    import mlflow

    config = build_config({"max_tokens_cap": 32, "default_max_tokens": 24, "batch_window_ms": 5})
    recorder = TraceRecorder("taoflow-serve-openai", MODEL, redact=True)
    app = create_app(tiny_policy, config, model_version=MODEL, token=TOKEN, recorder=recorder)
    with BackgroundServer(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0, timeout=60)
        yield client, recorder, url
    mlflow.set_tracking_uri(store)


def n_traces(recorder: TraceRecorder) -> int:
    import mlflow

    recorder.flush()
    return len(mlflow.search_traces(locations=[recorder.experiment_id], return_type="list"))


def test_models_list_and_retrieve_name_the_served_model(served):
    client, _, url = served
    listed = client.models.list()
    assert [m.id for m in listed.data] == [MODEL]
    assert listed.data[0].object == "model" and listed.data[0].owned_by == "taoflow"
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.models.retrieve("gpt-4o")
    anonymous = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anonymous.models.list()


def test_stream_arrives_token_by_token_and_equals_the_greedy_answer(served):
    import mlflow

    client, recorder, _ = served
    whole = client.chat.completions.create(
        model=MODEL, messages=QUESTION, temperature=0, max_tokens=32
    )
    answer = whole.choices[0].message.content
    assert answer, "the tiny model gave an empty answer: nothing to stream"
    before = n_traces(recorder)
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=QUESTION, temperature=0, max_tokens=32, stream=True
        )
    )
    choice_chunks = [c for c in chunks if c.choices]
    assert choice_chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in choice_chunks if c.choices[0].delta.content]
    assert len(pieces) > 1, pieces
    assert "".join(pieces) == answer
    assert choice_chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    # One trace for the streamed request, holding the full answer.
    assert n_traces(recorder) == before + 1
    trace = mlflow.get_trace(chunks[-1].model_extra["trace_id"])
    root = next(s for s in trace.data.spans if s.parent_id is None)
    assert root.outputs["choices"][0]["message"]["content"] == answer
    assert root.outputs["id"] == chunks[0].id


def test_sampled_stream_with_several_choices_matches_the_same_seed_unstreamed(served):
    client, _, _ = served
    asked = {"model": MODEL, "messages": QUESTION, "temperature": 1.0, "n": 2, "seed": 7}
    whole = client.chat.completions.create(max_tokens=16, **asked)
    pieces: list[list[str]] = [[], []]
    finish = [None, None]
    for chunk in client.chat.completions.create(max_tokens=16, stream=True, **asked):
        for choice in chunk.choices:
            if choice.delta.content:
                pieces[choice.index].append(choice.delta.content)
            finish[choice.index] = choice.finish_reason or finish[choice.index]
    assert all(len(p) > 1 for p in pieces), pieces
    assert ["".join(p) for p in pieces] == [c.message.content for c in whole.choices]
    assert all(c.message.content.strip() for c in whole.choices)  # real text, not just spaces
    assert finish == [c.finish_reason for c in whole.choices]


def test_a_stream_left_midway_is_still_traced_once(served):
    import time

    import httpx

    _, recorder, url = served
    before = n_traces(recorder)
    body = {"messages": QUESTION, "max_tokens": 32, "temperature": 0, "stream": True}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers) as r:
        first = next(r.iter_lines())
    assert first.startswith("data: ") and '"role": "assistant"' in first
    deadline = time.monotonic() + 60
    while n_traces(recorder) == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert n_traces(recorder) == before + 1
