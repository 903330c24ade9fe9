"""PII planted in every input path never reaches anything the run stores.

Usage-file rows (kept, malformed, duplicated, too long), a served request (messages, the
``model`` field, ``user``) and its feedback (comment, user) carry e-mails, phone and card
numbers; after serving and ``kedro run --pipeline ingest`` every file the run wrote — data
layers, logs, the MLflow store and its artifacts — is searched for them byte by byte.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from taoflow.serving import TraceRecorder, build_config, create_app
from taoflow.serving.server import BackgroundServer
from tests.test_serve import AUTH, TOKEN, chat, end_leftover_runs

EMAIL = "zoe.quill@example.org"
PHONE = "+44 20 7946 0958"
CARD = "4111 1111 1111 1111"
SECRETS = (EMAIL, PHONE, CARD, "zoe.quill", "7946 0958", "4111 1111")


def _plant_usage(path: Path) -> None:
    question = "State the final answer to the following arithmetic problem: 2 + 3 ="
    lines = [
        {"prompt": f"{question} (reply to {EMAIL})"},
        {"prompt": f"{question} call me on {PHONE}"},
        {"prompt": f"{question} call me on {PHONE}"},  # duplicate
        {"prompt": f"my card {CARD}, " + "word " * 400},  # too long: rejected
    ]
    text = "\n".join(json.dumps(line) for line in lines)
    text += '\n{"prompt": "broken json, mail ' + EMAIL + '"\n'  # malformed: rejected
    path.write_text(path.read_text() + text)


def _serve_and_rate(tiny_policy) -> None:
    config = build_config({"max_tokens_cap": 16, "default_max_tokens": 4, "batch_window_ms": 20})
    recorder = TraceRecorder(config.capture.experiment, "tiny-v1", redact=True)
    app = create_app(tiny_policy, config, model_version="tiny-v1", token=TOKEN, recorder=recorder)
    with BackgroundServer(app) as url, httpx.Client(base_url=url, headers=AUTH) as client:
        body = chat(f"What is 4 + 4? Write to {EMAIL} or {PHONE}", seed=1, model=EMAIL, user=CARD)
        reply = client.post("/v1/chat/completions", json=body)
        assert reply.status_code == 200, reply.text
        trace_id = reply.json()["trace_id"]
        vote = {"trace_id": trace_id, "thumbs": "down", "comment": f"mail {EMAIL}", "user": PHONE}
        assert client.post("/v1/feedback", json=vote).status_code == 200
    recorder.flush()


def test_pii_planted_in_every_input_reaches_no_stored_file(tiny_policy, kedro_project, mlflow_uri):
    from kedro.framework.session import KedroSession

    _plant_usage(kedro_project / "data" / "01_raw" / "usage.jsonl")
    _serve_and_rate(tiny_policy)
    with KedroSession.create(
        project_path=kedro_project, runtime_params={"model": {"name_or_path": "tiny-random"}}
    ) as session:
        session.run(pipeline_name="ingest")
    end_leftover_runs()

    prompts = kedro_project / "data" / "03_primary" / "prompts.parquet"
    assert prompts.is_file()
    raw_inputs = kedro_project / "data" / "01_raw"
    stored = [
        path
        for path in kedro_project.parent.rglob("*")
        if path.is_file() and raw_inputs not in path.parents
    ]
    assert any(p.name == "mlflow.db" for p in stored) and len(stored) > 5
    leaks = {
        str(path.relative_to(kedro_project.parent)): secret
        for path in stored
        for secret in SECRETS
        if secret.encode() in path.read_bytes()
    }
    assert not leaks, f"PII stored in: {leaks}"
