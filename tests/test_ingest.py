"""ingest: every source shape, every reject reason, the clear errors, PII, splits, MLflow traces."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kedro.io import DatasetError

from taoflow.config.ingest import IngestParams
from taoflow.core.ids import stable_hash
from taoflow.core.pii import redact_pii
from taoflow.core.text import as_messages, dedup_key, normalize_text
from taoflow.datasets.mlflow_traces import MlflowTracesDataset
from taoflow.datasets.usage_files import (
    AppendPartitionsDataset,
    JSONStateDataset,
    RawSource,
    UsageFilesDataset,
)
from taoflow.errors import UserError
from taoflow.pipelines.ingest.cleaning import clean_rows, holdout_score
from taoflow.pipelines.ingest.nodes import take_new_traces
from taoflow.pipelines.ingest.parsing import parse_file_source, parse_sources

SYSTEM = "Answer with the final number only."
Q = "State the final answer to the following arithmetic problem: {} ="


def params(**overrides):
    base = {
        "files": {},
        "traces": {"enabled": False, "span_name": "chat_completion"},
        "system_prompt": SYSTEM,
        "system_prompt_mode": "missing",
        "max_prompt_tokens": 64,
        "pii": {"enabled": True, "kinds": ["email", "phone", "card"]},
        "max_prompts": None,
        "holdout_fraction": 0.25,
        "max_raw_chars": 4000,
    }
    base.update(overrides)
    return IngestParams.model_validate(base)


def char_tokens(conversations):
    """A stand-in tokenizer: one token per 4 characters (unit tests need no model)."""
    return [sum(len(m["content"]) for m in c) // 4 + 1 for c in conversations]


def load_files(tmp_path: Path, files: dict[str, str | bytes], **spec) -> dict[str, RawSource]:
    sources = {}
    for name, content in files.items():
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        sources[path.stem] = {"filepath": str(path), **spec}
    return UsageFilesDataset(sources=sources).load()


def ingest_lines(tmp_path, lines: list[str], **overrides):
    sources = load_files(tmp_path, {"usage.jsonl": "\n".join(lines) + "\n"})
    cfg = params(**overrides)
    rows = parse_sources(sources, {}, cfg)
    return clean_rows(rows, cfg, char_tokens, seed=0)


def by_location(rejects: pd.DataFrame) -> dict[str, str]:
    return {
        loc.rsplit(":", 1)[1]: reason
        for loc, reason in zip(rejects.location, rejects.reason, strict=True)
    }


# --------------------------------------------------------------------------- sources and shapes


def test_jsonl_shapes_become_chat_messages(tmp_path):
    lines = [
        json.dumps({"prompt": Q.format("1 + 2")}),
        json.dumps({"messages": [{"role": "user", "content": Q.format("3 + 4")}]}),
        json.dumps({"prompt": Q.format("5 + 6"), "system": "Be brief."}),
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": Q.format("7 - 1")}]},
                    {"role": "assistant", "content": "6"},
                ]
            }
        ),
        json.dumps(Q.format("9 + 9")),  # a bare string is a plain prompt
    ]
    prompts, rejects, counts = ingest_lines(tmp_path, lines)
    assert rejects.empty and counts["read"] == counts["kept"] == 5
    msgs = [as_messages(m) for m in prompts["messages"]]
    assert msgs[0] == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": Q.format("1 + 2")},
    ]
    assert msgs[2][0] == {"role": "system", "content": "Be brief."}  # the row's own system turn
    assert msgs[3][-1] == {"role": "user", "content": Q.format("7 - 1")}  # assistant turn dropped
    assert counts["trailing_assistant_removed"] == 1
    assert list(prompts["prompt_id"]) == [stable_hash(m) for m in msgs]
    assert set(prompts["source"]) == {"usage"}
    assert json.loads(prompts["meta"][0]) == {"location": f"{tmp_path}/usage.jsonl:1"}


def test_system_prompt_replace_and_off(tmp_path):
    line = json.dumps({"prompt": "hi", "system": "Be brief."})
    prompts, _, _ = ingest_lines(tmp_path, [line], system_prompt_mode="replace")
    assert as_messages(prompts["messages"][0])[0]["content"] == SYSTEM
    prompts, _, _ = ingest_lines(tmp_path, [json.dumps({"prompt": "hi"})], system_prompt=None)
    assert as_messages(prompts["messages"][0]) == [{"role": "user", "content": "hi"}]


def test_csv_and_parquet_with_column_mapping(tmp_path):
    csv_text = 'question,sys,user_id\n"multi\nline question",Be brief.,u1\nplain one,,u2\n'
    frame = pd.DataFrame(
        {
            "conv": [json.dumps([{"role": "user", "content": "from parquet"}]), None],
            "q": [None, "x"],
        }
    )
    frame.to_parquet(tmp_path / "tab.parquet")
    sources = load_files(tmp_path, {"log.csv": csv_text})
    sources.update(UsageFilesDataset(sources={"tab": str(tmp_path / "tab.parquet")}).load())
    cfg = params(
        files={
            "log": {"mapping": {"prompt": "question", "system": "sys"}, "meta_fields": ["user_id"]},
            "tab": {"mapping": {"messages": "conv", "prompt": "q"}},
        }
    )
    prompts, rejects, counts = clean_rows(parse_sources(sources, {}, cfg), cfg, char_tokens)
    assert rejects.empty and counts["kept"] == 4
    assert counts["source.log.read"] == 2 and counts["source.tab.kept"] == 2
    first = as_messages(prompts["messages"][0])
    assert first == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "multi\nline question"},
    ]
    meta = [json.loads(m) for m in prompts["meta"]]
    assert meta[0]["user_id"] == "u1" and meta[1]["location"].endswith("log.csv:4")
    assert meta[2]["location"].endswith("tab.parquet:row 1")
    assert as_messages(prompts["messages"][3])[-1]["content"] == "x"


# --------------------------------------------------------------------------- rejects


def test_every_reject_reason_with_location(tmp_path):
    ok = {"messages": [{"role": "user", "content": Q.format("1 + 1")}]}
    lines = [
        json.dumps(ok),  # 1 kept
        json.dumps(ok),  # 2 exact duplicate
        json.dumps({"prompt": "  " + Q.format("1\u00a0+ 1").upper() + "\n"}),  # 3 normalised dup
        "",  # 4 blank
        '{"prompt": "broken',  # 5 broken JSON
        "[1, 2",  # 6 broken JSON
        "42",  # 7 not an object
        json.dumps({"text": "no mapped field"}),  # 8 missing field
        json.dumps({"messages": [{"role": "tool", "content": "x"}]}),  # 9 bad role
        json.dumps({"messages": [{"role": "system", "content": "only system"}]}),  # 10 no user
        json.dumps({"prompt": "word " * 200}),  # 11 too long
        json.dumps({"prompt": "   "}),  # 12 blank prompt
        json.dumps({"messages": "not json"}),  # 13 messages not parseable
    ]
    prompts, rejects, counts = ingest_lines(tmp_path, lines)
    assert len(prompts) == 1
    assert by_location(rejects) == {
        "2": "duplicate_exact",
        "3": "duplicate_normalized",
        "4": "empty",
        "5": "invalid_json",
        "6": "invalid_json",
        "7": "invalid_row",
        "8": "missing_field",
        "9": "invalid_messages",
        "10": "empty",
        "11": "too_long",
        "12": "empty",
        "13": "invalid_messages",
    }
    assert set(rejects.columns) >= {"source", "location", "reason", "raw", "detail"}
    assert rejects.set_index("reason").loc["invalid_row", "raw"] == "42"
    assert "same row as" in rejects.detail[0] and rejects.location[0].endswith("usage.jsonl:2")
    assert counts["rejected"] == 10 and counts["deduplicated"] == 2
    assert counts["rejected.invalid_json"] == 2 and counts["deduplicated.normalized"] == 1
    assert counts["kept"] + counts["rejected"] + counts["deduplicated"] == counts["read"] == 13


def test_sampling_cap_is_seeded_and_rejects_the_rest(tmp_path):
    lines = [json.dumps({"prompt": Q.format(f"{i} + 1")}) for i in range(10)]
    cfg = params(max_prompts=4)
    rows = parse_sources(load_files(tmp_path, {"u.jsonl": "\n".join(lines)}), {}, cfg)
    a, rejects, counts = clean_rows(rows, cfg, char_tokens, seed=1)
    b, _, _ = clean_rows(rows, cfg, char_tokens, seed=1)
    c, _, _ = clean_rows(rows, cfg, char_tokens, seed=2)
    assert len(a) == 4 and a["prompt_id"].tolist() == b["prompt_id"].tolist()
    assert set(a["prompt_id"]) != set(c["prompt_id"])
    assert (rejects["reason"] == "sampling_cap").sum() == 6 == counts["rejected.sampling_cap"]


# --------------------------------------------------------------------------- clear errors


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match=r"'usage'.*nope\.jsonl does not exist"):
        UsageFilesDataset(sources={"usage": str(tmp_path / "nope.jsonl")}).load()


def test_bad_encoding_is_a_reject_at_its_line(tmp_path):
    content = '{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n'.encode("latin-1")
    sources = load_files(tmp_path, {"usage.jsonl": content})
    rows = parse_sources(sources, {}, params())
    assert rows[0]["reason"] is None and rows[1]["reason"] == "invalid_encoding"
    assert rows[1]["location"].endswith("usage.jsonl:2") and "utf-8" in rows[1]["detail"]
    # the same bytes load when the encoding is declared
    sources = load_files(tmp_path, {"usage.jsonl": content}, encoding="latin-1")
    assert json.loads(sources["usage"].rows[1][1])["prompt"] == "café"


def test_missing_mapped_column_is_a_clear_error(tmp_path):
    sources = load_files(tmp_path, {"log.csv": "text,user\nhello,u1\n"})
    cfg = params(files={"log": {"mapping": {"prompt": "question"}}})
    with pytest.raises(
        UserError, match=r"'log'.*log\.csv.*prompt → 'question'.*\['text', 'user'\]"
    ):
        parse_sources(sources, {}, cfg)
    # JSONL: a field no row has is a configuration error too
    sources = load_files(tmp_path, {"u.jsonl": json.dumps({"text": "hi"})})
    with pytest.raises(UserError, match=r"mapped column"):
        parse_sources(sources, {}, params())
    with pytest.raises(UserError, match="does not list"):
        parse_sources(sources, {}, params(files={"other": {}}))


def test_zero_usable_prompts_stops_the_run(tmp_path, tiny_model_dir):
    from taoflow.models import load_tokenizer
    from taoflow.pipelines.ingest.nodes import build_prompts

    cfg = params()
    rows = parse_sources(load_files(tmp_path, {"u.jsonl": "not json\n\n"}), {}, cfg)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    with pytest.raises(UserError, match=r"zero usable prompts.*'invalid_json': 1.*u\.jsonl:1"):
        build_prompts(rows, cfg, tokenizer, seed=0)


@pytest.mark.parametrize(
    ("knob", "match"),
    [
        ({"holdout_fraction": 1.5}, "holdout_fraction"),
        ({"system_prompt_mode": "append"}, "system_prompt_mode"),
        ({"max_prompts": -1}, "max_prompts"),
        ({"pii": {"enabled": True, "kinds": ["ssn"]}}, "pii.kinds"),
    ],
)
def test_bad_knobs_are_named(knob, match):
    with pytest.raises(ValueError, match=match):  # pydantic's ValidationError is a ValueError
        clean_rows([], params(**knob), char_tokens)


# --------------------------------------------------------------------------- text rules


def test_normalisation_and_dedup_key():
    assert normalize_text("  a\u200b  b\t c \r\n\n\n\n  d  ") == "a b c\n\n  d"
    assert normalize_text("e\u0301") == "\u00e9"  # NFC
    assert dedup_key([{"role": "user", "content": "３ + ４ ="}]) == dedup_key(
        [{"role": "user", "content": "3  +  4 ="}]
    )


@pytest.mark.parametrize(
    ("text", "expected", "kinds"),
    [
        ("mail me at jane.doe+x@mail.example.org!", "mail me at [EMAIL]!", {"email": 1}),
        ("call +44 20 7946 0958 now", "call [PHONE] now", {"phone": 1}),
        ("or (555) 123-4567 / 555.123.4567", "or [PHONE] / [PHONE]", {"phone": 2}),
        ("card 4111-1111-1111-1111 ok", "card [CARD] ok", {"card": 1}),
        ("4111 1111 1111 1112 fails Luhn", "4111 1111 1111 1112 fails Luhn", {}),
        ("3 - 4 - 5 + 1234567 = ?", "3 - 4 - 5 + 1234567 = ?", {}),
        ("10 20 30 40 and 2024-01-15", "10 20 30 40 and 2024-01-15", {}),
    ],
)
def test_pii_redaction(text, expected, kinds):
    out, counts = redact_pii(text, ["email", "phone", "card"])
    assert out == expected and dict(counts) == kinds


def test_redaction_is_counted_and_can_be_switched_off(tmp_path):
    line = json.dumps({"prompt": "I am bob@example.com, 555-123-4567. " + Q.format("1 + 2")})
    prompts, _, counts = ingest_lines(tmp_path, [line])
    assert "[EMAIL]" in prompts["messages"][0][-1]["content"]
    assert (
        counts["redacted.rows"] == 1 and counts["redacted.email"] == counts["redacted.phone"] == 1
    )
    assert json.loads(prompts["meta"][0])["redacted"] == {"email": 1, "phone": 1}
    prompts, _, counts = ingest_lines(tmp_path, [line], pii={"enabled": False})
    assert "bob@example.com" in prompts["messages"][0][-1]["content"]
    assert counts["redacted.rows"] == 0


# --------------------------------------------------------------------------- splits


def test_split_is_stable_when_rows_are_added(tmp_path):
    lines = [json.dumps({"prompt": Q.format(f"{i} + {j}")}) for i in range(10) for j in range(6)]
    before, _, _ = ingest_lines(tmp_path, lines[:30])
    after, _, counts = ingest_lines(tmp_path, lines[30:] + lines[:30])  # new rows, other order
    split_before = dict(zip(before.prompt_id, before.split, strict=True))
    split_after = dict(zip(after.prompt_id, after.split, strict=True))
    assert all(split_after[pid] == split for pid, split in split_before.items())
    assert 0 < counts["split.holdout"] < counts["kept"] == 60
    assert all((holdout_score(p) < 0.25) == (s == "holdout") for p, s in split_after.items())


# --------------------------------------------------------------------------- property


_line = st.one_of(
    st.text(max_size=80),
    st.builds(json.dumps, st.text(max_size=40)),
    st.builds(lambda t: json.dumps({"prompt": t}), st.text(max_size=300)),
    st.builds(
        lambda r, t: json.dumps({"messages": [{"role": r, "content": t}]}),
        st.sampled_from(["user", "assistant", "system", "tool", "User"]),
        st.text(max_size=60),
    ),
    st.sampled_from(["", "{}", "null", "[]", '{"prompt": null}', '{"messages": [1]}']),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(_line, max_size=25), cap=st.one_of(st.none(), st.integers(0, 5)))
def test_property_every_row_is_accounted_for(lines, cap):
    """Arbitrary lines: no crash, and kept + rejected + deduplicated == read."""
    source = RawSource(
        name="fuzz",
        path="fuzz.jsonl",
        format="jsonl",
        rows=[(f"fuzz.jsonl:{i}", line) for i, line in enumerate(lines, 1)],
    )
    cfg = params(max_prompt_tokens=20, max_prompts=cap)
    try:
        rows = parse_file_source(source, None, cfg)
    except UserError as err:  # only a file-level mapping problem may stop the run
        assert "mapped column" in str(err)
        return
    prompts, rejects, counts = clean_rows(rows, cfg, char_tokens)
    assert counts["kept"] + counts["rejected"] + counts["deduplicated"] == counts["read"]
    assert len(prompts) + len(rejects) == len(lines) == counts["read"]
    assert prompts["prompt_id"].is_unique
    assert set(rejects["location"]).isdisjoint(json.loads(m)["location"] for m in prompts.meta)


# --------------------------------------------------------------------------- state datasets


def test_state_datasets_start_empty_and_accumulate(tmp_path):
    state = JSONStateDataset(filepath=str(tmp_path / "wm.json"))
    assert state.load() == {}
    state.save({"a": 1})
    assert state.load() == {"a": 1}
    log = AppendPartitionsDataset(path=str(tmp_path / "log"), dataset="pandas.ParquetDataset")
    assert log.load() == {}
    log.save({"b": pd.DataFrame({"x": [2]})})
    log.save({"a": pd.DataFrame({"x": [1]})})
    assert [load()["x"][0] for load in log.load().values()] == [1, 2]


# --------------------------------------------------------------------------- MLflow traces


@pytest.fixture()
def sync_traces(monkeypatch):
    """Export traces synchronously: each async flush would cost about a second."""
    monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")


def log_chat_trace(question: str, answer: str, version: str = "3", feedback=None) -> str:
    """A served request exactly as the serve stage records it (the trace contract)."""
    import mlflow
    from mlflow.entities import AssessmentSource

    with mlflow.start_span(name="chat_completion") as span:
        span.set_inputs(
            {
                "messages": [{"role": "user", "content": question}],
                "max_tokens": 32,
                "temperature": 0.7,
            }
        )
        span.set_outputs(
            {"choices": [{"message": {"role": "assistant", "content": answer}}], "model": "m"}
        )
        mlflow.update_current_trace(tags={"taoflow.model_version": version})
        trace_id = span.trace_id
    mlflow.flush_trace_async_logging()  # a no-op unless tracing started async elsewhere
    if feedback is not None:
        mlflow.log_feedback(
            trace_id=trace_id,
            name="user_feedback",
            value=feedback,
            source=AssessmentSource(source_type="HUMAN", source_id="tester"),
            rationale="checked by hand",
        )
    return trace_id


def test_traces_source_reads_only_new_traces(mlflow_uri, sync_traces, tmp_path):
    import mlflow

    watermark_file = tmp_path / "watermark.json"
    traces = MlflowTracesDataset(
        tracking_uri=mlflow_uri,
        experiment="serve-test",
        model_version_tag="taoflow.model_version",
        page_size=2,
        watermark_filepath=str(watermark_file),
    )
    state = JSONStateDataset(filepath=str(watermark_file))
    trace_params = params().traces.model_copy(update={"enabled": True})

    def fetch():
        """One ingest step: read past the watermark, then move it (as the pipeline saves it)."""
        shards, watermark = take_new_traces(traces.load(), state.load(), trace_params)
        state.save(watermark)
        return shards, watermark

    assert traces.load().empty and fetch() == ({}, {})  # no experiment yet: nothing, no error
    mlflow.set_experiment("serve-test")
    first = [log_chat_trace(Q.format(f"{i} + 1"), str(i + 1), feedback=(i == 0)) for i in range(3)]
    with mlflow.start_span(name="something_else"):
        pass
    mlflow.flush_trace_async_logging()

    shards, watermark = fetch()
    (frame,) = shards.values()
    assert len(frame) == 4 and set(first) <= set(frame.trace_id)  # paged, 2 per call
    assert watermark["serve-test"]["n_ingested"] == 4
    assert watermark["serve-test"]["experiment_id"] is not None
    assert fetch() == ({}, watermark)  # nothing new
    disabled = trace_params.model_copy(update={"enabled": False})
    assert take_new_traces(frame, watermark, disabled) == ({}, watermark)

    newer = log_chat_trace(Q.format("8 + 8"), "16", version="4")
    shards2, watermark2 = fetch()
    assert list(next(iter(shards2.values())).trace_id) == [newer]
    assert watermark2["serve-test"]["n_ingested"] == 5

    cfg_ingest = params(traces={"enabled": True, "span_name": "chat_completion"})
    all_shards = {k: (lambda f=f: f) for k, f in {**shards, **shards2}.items()}
    rows = parse_sources({}, all_shards, cfg_ingest)
    prompts, rejects, counts = clean_rows(rows, cfg_ingest, char_tokens)
    assert counts["source.mlflow_traces.kept"] == 4 and counts["read"] == 5
    assert rejects.reason.tolist() == ["invalid_row"]  # the non-chat trace, by trace id
    assert rejects.location[0].startswith("tr-") and "something_else" in rejects.detail[0]
    meta = {m["trace_id"]: m for m in map(json.loads, prompts["meta"])}
    assert meta[first[0]]["served_response"] == "1" and meta[first[0]]["model_version"] == "3"
    assert meta[first[0]]["feedback"] == [
        {"name": "user_feedback", "value": True, "source": "HUMAN", "rationale": "checked by hand"}
    ]
    assert meta[newer]["feedback"] == [] and meta[newer]["model_version"] == "4"


# --------------------------------------------------------------------------- end to end


def test_ingest_pipeline_end_to_end(kedro_project, sync_traces):
    """The shipped data and a served trace through KedroSession; counts land in MLflow."""
    import mlflow
    from kedro.framework.session import KedroSession

    mlflow.set_experiment("taoflow-serve")
    trace_id = log_chat_trace(Q.format("9 - 9 + 9"), "9", feedback=1.0)

    def run():
        with KedroSession.create(
            project_path=kedro_project,
            # no sampling cap: every shipped usage line and the served trace are accounted for
            runtime_params={
                "model": {"name_or_path": "tiny-random"},
                "ingest": {"max_prompts": None},
            },
        ) as session:
            # prepare_base writes base_tokenizer, which ingest counts prompt tokens with
            session.run(pipeline_names=["prepare_base", "ingest"])
        return pd.read_parquet(kedro_project / "data/03_primary/prompts.parquet")

    prompts = run()
    rejects = pd.read_parquet(kedro_project / "data/02_intermediate/ingest_rejects.parquet")
    gold = (kedro_project / "data/01_raw/usage_gold.jsonl").read_text().splitlines()
    assert (prompts.source == "usage").sum() == len(gold)
    assert (prompts.source == "mlflow_traces").sum() == 1
    assert prompts.prompt_id.is_unique and set(prompts.split) == {"train", "holdout"}
    assert {"too_long", "invalid_json", "duplicate_exact", "duplicate_normalized"} <= set(
        rejects.reason
    )
    assert as_messages(prompts.messages.iloc[0])[0] == {"role": "system", "content": SYSTEM}
    run_ = mlflow.search_runs(experiment_names=["taoflow"], output_format="list")[0]
    metrics = run_.data.metrics
    assert (
        metrics["ingest.read"]
        == metrics["ingest.kept"] + metrics["ingest.rejected"] + metrics["ingest.deduplicated"]
    )
    assert metrics["ingest.redacted.rows"] >= 2 and metrics["ingest.source.mlflow_traces.kept"] == 1
    watermark = json.loads(
        (kedro_project / "data/02_intermediate/ingest_traces_watermark.json").read_text()
    )
    assert watermark["taoflow-serve"]["trace_ids"] == [trace_id]

    # A second run fetches nothing new yet keeps the trace prompt taken by the first run.
    again = run()
    assert again.prompt_id.tolist() == prompts.prompt_id.tolist()
    assert again.split.tolist() == prompts.split.tolist()
