"""Serving: OpenAI-compatible API over real HTTP, traces + feedback in MLflow, ingest reads them."""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import as_completed as futures_as_completed
from pathlib import Path

import httpx
import pandas as pd
import pytest

from taoflow.serving import (
    FEEDBACK_NAME,
    MODEL_ALIAS_TAG,
    MODEL_NAME_TAG,
    MODEL_NUMBER_TAG,
    MODEL_VERSION_TAG,
    ROOT_SPAN,
    TraceRecorder,
    build_config,
    create_app,
    load_served_policy,
    model_trace_tags,
)
from taoflow.serving.batching import BatchQueue, GenerationRequest, QueueFullError
from taoflow.serving.config import AuthConfig, resolve_token
from taoflow.serving.server import BackgroundServer

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def end_leftover_runs() -> None:
    """A KedroSession run leaves kedro-mlflow's run on this thread's stack; later tests use
    another store, where ending it would fail."""
    import mlflow

    while mlflow.active_run():
        mlflow.end_run()


def chat(content: str, **extra) -> dict:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 6, **extra}


@pytest.fixture(scope="module")
def serve_config():
    return build_config({"max_tokens_cap": 16, "default_max_tokens": 8, "batch_window_ms": 20})


@pytest.fixture(scope="module")
def module_store(tmp_path_factory):
    """One throwaway MLflow store for this module's server (creating a store takes seconds)."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    uri = f"sqlite:///{tmp_path_factory.mktemp('serve_store') / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(previous)


@pytest.fixture(scope="module")
def server(tiny_policy, serve_config, module_store):
    """A live server on a free loopback port: tiny model, token on, capture into a temp store."""
    import mlflow

    recorder = TraceRecorder("taoflow-serve", "tiny-test-v1", redact=True)
    app = create_app(
        tiny_policy, serve_config, model_version="tiny-test-v1", token=TOKEN, recorder=recorder
    )
    with BackgroundServer(app) as url:
        yield url, recorder
    mlflow.set_tracking_uri(module_store)


def test_trace_ids_stay_new_after_a_run_seeds_random(server):
    """A pipeline run seeds Python's `random` (seed_everything); a server in the same process (the
    simulator's) must still hand out new trace ids, or a new trace collides with an old one."""
    from taoflow.core.ids import seed_everything

    url, _ = server
    ids = []
    with httpx.Client(base_url=url, headers=AUTH) as client:
        for _ in range(2):
            seed_everything(0)
            reply = client.post("/v1/chat/completions", json=chat("What is 1 + 1?", seed=3))
            ids.append(reply.json()["trace_id"])
    assert ids[0] != ids[1]


def test_serve_capture_feedback_and_ingest_close_the_loop(tiny_policy, kedro_project, mlflow_uri):
    """Requests + feedback over HTTP arrive in `prompts` (meta) after `kedro run -p ingest`."""
    from kedro.framework.session import KedroSession

    config = build_config({"max_tokens_cap": 16, "default_max_tokens": 8, "batch_window_ms": 50})
    recorder = TraceRecorder(config.capture.experiment, "models:/taoflow/7", redact=True)
    app = create_app(
        tiny_policy, config, model_version="models:/taoflow/7", token=TOKEN, recorder=recorder
    )
    questions = [
        "What is 4 + 4? Reply to ann.lee@example.com",
        "What is 2 + 5?",
        "What is 9 - 1?",
    ]
    with BackgroundServer(app) as url, httpx.Client(base_url=url, headers=AUTH) as client:
        with ThreadPoolExecutor(3) as pool:  # concurrent: the batcher must answer them all
            responses = list(
                pool.map(
                    lambda q: client.post("/v1/chat/completions", json=chat(q, seed=1)), questions
                )
            )
        assert [r.status_code for r in responses] == [200, 200, 200]
        bodies = [r.json() for r in responses]
        for r, body in zip(responses, bodies, strict=True):
            assert r.headers["X-Trace-Id"] == body["trace_id"]
            assert body["choices"][0]["message"]["role"] == "assistant"
            assert body["choices"][0]["finish_reason"] in ("stop", "length")
            assert body["usage"]["completion_tokens"] <= 6
        assert app.state.queue.batches_run < 3  # at least two requests shared a generate call
        votes = [{"thumbs": "up"}, {"thumbs": "down", "comment": "wrong"}, {"score": 0.25}]
        for body, vote in zip(bodies, votes, strict=True):
            fb = client.post("/v1/feedback", json={"trace_id": body["trace_id"], **vote})
            assert fb.status_code == 200, fb.text
        missing = client.post("/v1/feedback", json={"trace_id": "tr-0000", "thumbs": "up"})
        assert missing.status_code == 404 and "tr-0000" in missing.json()["error"]["message"]
    recorder.flush()

    with KedroSession.create(
        project_path=kedro_project, runtime_params={"model": {"name_or_path": "tiny-random"}}
    ) as session:
        session.run(pipeline_names=["prepare_base", "ingest"])  # base_tokenizer, then ingest
    end_leftover_runs()
    prompts = pd.read_parquet(kedro_project / "data/03_primary/prompts.parquet")
    served = prompts[prompts["source"] == "mlflow_traces"]
    metas = {json.loads(m)["trace_id"]: json.loads(m) for m in served["meta"]}
    assert set(metas) == {b["trace_id"] for b in bodies}
    expected_values = {bodies[0]["trace_id"]: 1.0, bodies[1]["trace_id"]: 0.0}
    expected_values[bodies[2]["trace_id"]] = 0.25
    for body in bodies:
        meta = metas[body["trace_id"]]
        assert meta["model_version"] == "models:/taoflow/7"
        assert meta["served_response"] == body["choices"][0]["message"]["content"]
        assert [f["name"] for f in meta["feedback"]] == [FEEDBACK_NAME]
        assert meta["feedback"][0]["value"] == expected_values[body["trace_id"]]
        assert meta["feedback"][0]["source"] == "HUMAN"
    assert metas[bodies[1]["trace_id"]]["feedback"][0]["rationale"] == "wrong"
    texts = " ".join(m[-1]["content"] for m in served["messages"])
    assert "2 + 5" in texts and "[EMAIL]" in texts and "example.com" not in texts


def test_trace_contract(server, module_store):
    """Root span name, inputs/outputs shapes and the model-version tag, as ingest expects."""
    import mlflow

    mlflow.set_tracking_uri(module_store)
    url, recorder = server
    body = httpx.post(
        f"{url}/v1/chat/completions", json=chat("What is 1 + 1?", temperature=0.0), headers=AUTH
    ).json()
    recorder.flush()
    trace = mlflow.get_trace(body["trace_id"])
    root = next(s for s in trace.data.spans if s.parent_id is None)
    assert root.name == ROOT_SPAN
    assert root.inputs["messages"] == [{"role": "user", "content": "What is 1 + 1?"}]
    assert root.inputs["max_tokens"] == 6 and root.inputs["temperature"] == 0.0
    assert root.outputs["choices"] == body["choices"]
    assert root.outputs["id"] == body["id"] and root.outputs["usage"] == body["usage"]
    assert trace.info.tags[MODEL_VERSION_TAG] == "tiny-test-v1"
    assert trace.info.experiment_id == recorder.experiment_id
    assert [s.name for s in trace.data.spans if s.parent_id == root.span_id] == ["generate"]


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        (b"{not json", 400, "not valid JSON"),
        (json.dumps([1, 2]).encode(), 400, "JSON object"),
        (json.dumps({"messages": []}).encode(), 400, "messages"),
        (json.dumps({"messages": [{"role": "robot", "content": "x"}]}).encode(), 400, "role"),
        (json.dumps({"messages": [{"role": "user"}]}).encode(), 400, "content"),
        (json.dumps(chat("x", max_tokens=10_000)).encode(), 400, "max_tokens"),
        (json.dumps(chat("x", max_tokens=0)).encode(), 400, "max_tokens"),
        (json.dumps(chat("x", temperature=7)).encode(), 400, "temperature"),
        (json.dumps(chat("x", n=50)).encode(), 400, "n 50"),
        (json.dumps(chat("x", tools=[{"type": "function"}])).encode(), 400, "tools"),
        (
            json.dumps({"messages": [{"role": "assistant", "content": "x"}]}).encode(),
            400,
            "last message",
        ),
        (json.dumps(chat("x" * 70_000)).encode(), 413, "exceeds"),
    ],
)
def test_bad_requests_get_clear_4xx(server, payload, status, message):
    url, _ = server
    r = httpx.post(
        f"{url}/v1/chat/completions",
        content=payload,
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert r.status_code == status, r.text
    assert message in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "payload",
    [
        {"trace_id": "tr-1"},
        {"trace_id": "tr-1", "thumbs": "up", "score": 1.0},
        {"trace_id": "tr-1", "thumbs": "sideways"},
        {"trace_id": "tr-1", "score": 3.0},
        {"thumbs": "up"},
    ],
)
def test_bad_feedback_gets_400(server, payload):
    url, _ = server
    r = httpx.post(f"{url}/v1/feedback", json=payload, headers=AUTH)
    assert r.status_code == 400, r.text


def test_token_is_required_when_configured(server):
    url, _ = server
    body = chat("What is 3 + 3?")
    assert httpx.post(f"{url}/v1/chat/completions", json=body).status_code == 401
    wrong = httpx.post(
        f"{url}/v1/chat/completions", json=body, headers={"Authorization": "Bearer nope"}
    )
    assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
    fb = httpx.post(f"{url}/v1/feedback", json={"trace_id": "tr-1", "thumbs": "up"})
    assert fb.status_code == 401
    assert httpx.post(f"{url}/v1/chat/completions", json=body, headers=AUTH).status_code == 200
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny-test-v1"


def test_streaming_and_seeded_answers(server):
    url, _ = server
    seeded = chat("What is 5 + 2?", seed=123, temperature=1.0)
    first = httpx.post(f"{url}/v1/chat/completions", json=seeded, headers=AUTH).json()
    again = httpx.post(f"{url}/v1/chat/completions", json=seeded, headers=AUTH).json()
    assert first["choices"][0]["message"] == again["choices"][0]["message"]
    assert first["trace_id"] != again["trace_id"]
    stream = httpx.post(f"{url}/v1/chat/completions", json={**seeded, "stream": True}, headers=AUTH)
    assert stream.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in stream.text.splitlines() if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == first["choices"][0]["message"]["content"]
    assert chunks[-1]["trace_id"] not in (None, first["trace_id"], again["trace_id"])


def test_capture_off_records_nothing(tiny_policy, serve_config, module_store):
    import mlflow

    mlflow.set_tracking_uri(module_store)

    def n_traces() -> int:
        ids = [e.experiment_id for e in mlflow.search_experiments()]
        return len(mlflow.search_traces(locations=ids, return_type="list")) if ids else 0

    before = n_traces()
    app = create_app(tiny_policy, serve_config, model_version="tiny", recorder=None)
    with BackgroundServer(app) as url:
        r = httpx.post(f"{url}/v1/chat/completions", json=chat("What is 1 + 2?"))
    assert r.status_code == 200 and r.json()["trace_id"] is None and "X-Trace-Id" not in r.headers
    assert n_traces() == before


def test_batch_queue_batches_and_refuses_when_full():
    """Concurrent submits share one call; a full queue raises instead of dropping silently."""
    calls: list[int] = []
    gate = threading.Event()

    def run_batch(requests):
        calls.append(len(requests))
        gate.wait(5)
        return [[{"completion": r.messages[0]["content"], "n_tokens": 1}] for r in requests]

    def request(text: str, temperature: float = 1.0) -> GenerationRequest:
        return GenerationRequest(
            messages=[{"role": "user", "content": text}],
            max_new_tokens=4,
            temperature=temperature,
            top_p=1.0,
            n=1,
            seed=0,
        )

    async def scenario():
        queue = BatchQueue(run_batch, max_queue=2, max_batch_size=8, window_s=0.05)
        await queue.start()
        gate.set()
        results = await asyncio.gather(*(queue.submit(request(f"q{i}")) for i in range(2)))
        assert [r.samples[0]["completion"] for r in results] == ["q0", "q1"]
        assert calls == [2]
        # Different sampling settings never share a call.
        await asyncio.gather(queue.submit(request("a", 0.0)), queue.submit(request("b", 1.0)))
        assert calls == [2, 1, 1]
        gate.clear()
        running = asyncio.ensure_future(queue.submit(request("busy")))
        await asyncio.sleep(0.2)  # the worker is now blocked inside run_batch
        waiting = [asyncio.ensure_future(queue.submit(request(f"w{i}"))) for i in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError, match="2 requests already waiting"):
            await queue.submit(request("one too many"))
        gate.set()
        done = await asyncio.gather(running, *waiting)
        assert [r.samples[0]["completion"] for r in done] == ["busy", "w0", "w1"]
        await queue.stop()

    asyncio.run(scenario())


def test_queue_full_is_http_429(tiny_policy):
    config = build_config(
        {"max_queue": 1, "max_batch_size": 1, "batch_window_ms": 0, "default_max_tokens": 4}
    )
    app = create_app(tiny_policy, config, model_version="tiny", recorder=None)
    gate = threading.Event()
    original = app.state.queue._run_batch

    def slow(requests):
        gate.wait(20)
        return original(requests)

    app.state.queue._run_batch = slow
    with BackgroundServer(app) as url, ThreadPoolExecutor(4) as pool:
        post = lambda i: httpx.post(f"{url}/v1/chat/completions", json=chat(f"q{i}"), timeout=30)  # noqa: E731
        futures = [pool.submit(post, i) for i in range(4)]
        first_refusal = next(iter(futures_as_completed(futures, timeout=15)))
        gate.set()
        responses = [f.result() for f in futures]
    assert first_refusal.result().status_code == 429  # refused while the others still wait
    assert "busy" in first_refusal.result().json()["error"]["message"]
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) == {200, 429} and statuses.count(200) >= 1


def test_config_errors_and_token_sources(monkeypatch):
    with pytest.raises(ValueError, match=r"serve\.max_tokenz"):
        build_config({"max_tokenz": 3})
    with pytest.raises(ValueError, match="default_max_tokens"):
        build_config({"max_tokens_cap": 8, "default_max_tokens": 16})
    monkeypatch.delenv("TAOFLOW_SERVE_TOKEN", raising=False)
    assert resolve_token(AuthConfig(), {}) is None
    monkeypatch.setenv("TAOFLOW_SERVE_TOKEN", "from-env")
    assert resolve_token(AuthConfig(), {}) == "from-env"
    auth = AuthConfig(token_env=None, credentials_key="serve")
    assert resolve_token(auth, {"serve": {"token": "from-creds"}}) == "from-creds"
    with pytest.raises(ValueError, match="not in credentials"):
        resolve_token(auth, {})


def test_champion_is_loaded_from_the_registry(tiny_policy, mlflow_uri, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    with pytest.raises(LookupError, match="taoflow serve --model embedded"):
        load_served_policy("champion", "tiny-champ", cache_dir=tmp_path)
    mlflow.set_experiment("registry-test")
    with mlflow.start_run():  # the way evaluation's gate registers: the transformers flavour
        info = mlflow.transformers.log_model(
            transformers_model={"model": tiny_policy.model, "tokenizer": tiny_policy.tokenizer},
            name="policy",
            task="text-generation",
            registered_model_name="tiny-champ",
            pip_requirements=[],
            metadata={"taoflow_lineage": json.dumps({"round": 2, "algorithm": "rft"})},
        )
    version = MlflowClient().get_model_version("tiny-champ", str(info.registered_model_version))
    MlflowClient().set_registered_model_alias("tiny-champ", "champion", version.version)
    policy, served = load_served_policy("champion", "tiny-champ", cache_dir=tmp_path)
    assert served == f"models:/tiny-champ/{version.version}"
    assert policy.lineage["round"] == 2 and policy.lineage["registry_version"] == served
    assert (tmp_path / "served" / f"tiny-champ-v{version.version}").is_dir()
    from taoflow.generation import generate_completions

    out = generate_completions(
        policy, [[{"role": "user", "content": "hi"}]], do_sample=False, max_new_tokens=3
    )
    assert out[0][0]["n_tokens"] >= 1

    # what it answers is traced with the registered name, version and alias, and linked to the
    # logged model: traces can be searched per model version
    assert policy.lineage["registered_alias"] == "champion"
    recorder = TraceRecorder("tiny-champ-serve", served, lineage=policy.lineage)
    config = build_config({"max_tokens_cap": 16, "default_max_tokens": 4})
    app = create_app(policy, config, model_version=served, recorder=recorder)
    with BackgroundServer(app) as url:
        body = httpx.post(f"{url}/v1/chat/completions", json=chat("What is 2 + 2?")).json()
    recorder.flush()
    tags = mlflow.get_trace(body["trace_id"]).info.tags
    assert tags[MODEL_NAME_TAG] == "tiny-champ"
    assert tags[MODEL_NUMBER_TAG] == str(version.version)
    assert tags[MODEL_ALIAS_TAG] == "champion" and tags[MODEL_VERSION_TAG] == served
    found = mlflow.search_traces(
        locations=[recorder.experiment_id],
        filter_string=f"tag.`{MODEL_NUMBER_TAG}` = '{version.version}'",
        return_type="list",
    )
    assert [t.info.trace_id for t in found] == [body["trace_id"]]
    assert policy.lineage["logged_model_id"] == info.model_id
    linked = mlflow.search_traces(
        locations=[recorder.experiment_id], model_id=info.model_id, return_type="list"
    )
    assert [t.info.trace_id for t in linked] == [body["trace_id"]]


def test_model_trace_tags_name_a_plain_reference():
    assert model_trace_tags("embedded") == {
        MODEL_VERSION_TAG: "embedded",
        MODEL_NAME_TAG: "embedded",
    }


def test_cli_prepare_base_and_missing_champion(kedro_project, capsys):
    from taoflow.cli import main

    assert (
        main(["prepare-base", "--project-path", str(kedro_project), "--model", "tiny-random"]) == 0
    )
    path = capsys.readouterr().out.strip().splitlines()[-1]
    assert (kedro_project / path / "config.json").is_file()
    # No champion registered in the temp store: a clear error and exit code 2, no traceback.
    assert main(["serve", "--project-path", str(kedro_project), "--port", "0"]) == 2


def test_shipped_parameters_match_the_validated_defaults():
    """parameters_serve.yml (resolved as the CLI resolves it) equals ServeConfig's defaults."""
    from taoflow.serving.config import ServeConfig, load_project_config

    params, _, _ = load_project_config(PROJECT_ROOT, env="base")
    assert build_config(params["serve"]) == ServeConfig()
    assert params["serve"]["registered_model"] == params["promote"]["registered_model_name"]
