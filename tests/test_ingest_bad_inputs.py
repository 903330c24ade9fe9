"""Bad inputs: every case either accounts for every input row or stops with one line naming the file.

Each case writes files, runs ingest's dataset and nodes directly (no Kedro session) and checks
``read == kept + rejected + deduplicated`` against a count of the input made here with simple
per-format logic (lines split on ``\\n``; CSV lines minus header minus the continuation lines the
case states; parquet metadata; trace-log rows), never with the reader under test.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from taoflow.config.ingest import IngestParams
from taoflow.datasets.usage_files import UsageFilesDataset
from taoflow.errors import UserError
from taoflow.pipelines.ingest.cleaning import clean_rows
from taoflow.pipelines.ingest.parsing import parse_sources

GOOD = json.dumps({"prompt": "What is 2 + 2?"})


def line(prompt: str, **extra: Any) -> str:
    return json.dumps({"prompt": prompt, **extra}, ensure_ascii=False)


def jl(*lines: str, end: str = "\n") -> bytes:
    return (end.join(lines) + end).encode("utf-8")


def nested(depth: int) -> str:
    return json.dumps({"prompt": "deep", "x": 0}).replace("0", "[" * depth + "]" * depth)


def parquet(frame: pd.DataFrame) -> bytes:
    import io

    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    return buffer.getvalue()


@dataclass
class Case:
    files: dict[str, bytes]  # name → content; a value b"->target" makes a symbolic link
    sources: dict[str, Any] | None = None  # catalog sources (default: one per top-level file)
    params: dict[str, Any] = field(default_factory=dict)
    continuation: dict[str, int] = field(default_factory=dict)  # CSV lines inside quoted cells
    reasons: dict[str, str] = field(default_factory=dict)  # "file:line" suffix → reject reason
    kept: int | None = None
    stops: str | None = None  # the run stops: the one-line message names this


def trace_log(*requests: Any, **columns: list[Any]) -> pd.DataFrame:
    n = len(requests)
    frame = pd.DataFrame(
        {
            "trace_id": [f"tr-{i}" for i in range(n)],
            "timestamp_ms": list(range(1, n + 1)),
            "experiment": ["serve"] * n,
            "root_span": ["chat_completion"] * n,
            "state": ["OK"] * n,
            "request": list(requests),
            "response": ["null"] * n,
            "model_version": ["1"] * n,
            "feedback": ["[]"] * n,
        }
    )
    for name, values in columns.items():
        frame[name] = values
    return frame


def chat(text: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": text}]}, ensure_ascii=False)


U2028 = line("first\u2028second") + "\n" + line("a\u2029b\u0085c") + "\n" + GOOD + "\n"
CSV_HEAD = "prompt,user\n"

CASES: dict[str, Case] = {
    # ------------------------------------------------------------------ JSONL: line splitting
    "jsonl_good": Case({"u.jsonl": jl(GOOD, line("What is 3 + 3?"))}, kept=2),
    "jsonl_u2028_u2029_u0085_in_strings": Case({"u.jsonl": U2028.encode()}, kept=3),
    "jsonl_crlf": Case({"u.jsonl": jl(GOOD, line("b"), end="\r\n")}, kept=2),
    "jsonl_mixed_crlf_lf": Case({"u.jsonl": (GOOD + "\r\n" + line("b") + "\n").encode()}, kept=2),
    "jsonl_no_final_newline": Case({"u.jsonl": (GOOD + "\n" + line("b")).encode()}, kept=2),
    "jsonl_bare_cr_inside_line": Case(
        {"u.jsonl": jl(GOOD + "\r" + line("b"), line("c"))},
        reasons={":1": "invalid_json"},
        kept=1,
    ),
    "jsonl_form_feed_and_vt": Case(
        {"u.jsonl": jl(GOOD + "\x0c", "\x0b" + line("b"), line("c"))}, kept=1
    ),
    "jsonl_blank_and_whitespace_lines": Case(
        {"u.jsonl": jl(GOOD, "", "   ", "\t", line("b"))},
        reasons={":2": "empty", ":3": "empty", ":4": "empty"},
        kept=2,
    ),
    "jsonl_only_newline": Case({"u.jsonl": b"\n"}, reasons={":1": "empty"}, kept=0),
    "jsonl_nul_byte": Case(
        {"u.jsonl": jl(GOOD, '{"prompt": "a\x00b"}')}, reasons={":2": "invalid_json"}, kept=1
    ),
    # ------------------------------------------------------------------ JSONL: encodings
    "jsonl_bom": Case({"u.jsonl": b"\xef\xbb\xbf" + jl(GOOD, line("b"))}, kept=2),
    "jsonl_bom_declared_utf8": Case(
        {"u.jsonl": b"\xef\xbb\xbf" + jl(GOOD, line("b"))},
        sources={"u": {"filepath": "u.jsonl", "encoding": "utf-8"}},
        reasons={":1": "invalid_json"},
        kept=1,
    ),
    "jsonl_latin1_declared": Case(
        {"u.jsonl": (line("caf\xe9") + "\n" + GOOD + "\n").encode("latin-1")},
        sources={"u": {"filepath": "u.jsonl", "encoding": "latin-1"}},
        kept=2,
    ),
    "jsonl_invalid_utf8_line": Case(
        {"u.jsonl": jl(GOOD) + b'{"prompt": "caf\xe9"}\n' + jl(line("b"))},
        reasons={":2": "invalid_encoding"},
        kept=2,
    ),
    "jsonl_truncated_multibyte_at_eof": Case(
        {"u.jsonl": jl(GOOD) + '{"prompt": "€'.encode()[:-1]},
        reasons={":2": "invalid_encoding"},
        kept=1,
    ),
    "jsonl_utf16": Case(
        {"u.jsonl": (GOOD + "\n" + line("b") + "\n").encode("utf-16")},
        sources={"u": {"filepath": "u.jsonl", "encoding": "utf-16"}},
        kept=2,
    ),
    # ------------------------------------------------------------------ JSONL: nesting, sizes
    "jsonl_nesting_recursion": Case(
        {"u.jsonl": jl(GOOD, "[" * 100_000 + "]" * 100_000, nested(100_000))},
        reasons={":2": "too_deep", ":3": "too_deep"},
        kept=1,
    ),
    "jsonl_nesting_over_limit": Case(
        {"u.jsonl": jl(GOOD, nested(10), nested(2))},
        params={"limits": {"max_json_depth": 8}},
        reasons={":2": "too_deep"},
        kept=2,
    ),
    "jsonl_escaped_lone_surrogate": Case(
        {"u.jsonl": jl(GOOD, '{"prompt": "x \\ud800 y"}', '{"prompt": "ok \\ud83d\\ude00"}')},
        reasons={":2": "invalid_text"},
        kept=2,
    ),
    "jsonl_lone_surrogate_in_meta": Case(
        {"u.jsonl": jl(GOOD, '{"prompt": "b", "user": "\\udfff"}')},
        params={"files": {"u": {"meta_fields": ["user"]}}},
        reasons={":2": "invalid_text"},
        kept=1,
    ),
    "jsonl_line_over_max_bytes": Case(
        {"u.jsonl": jl(GOOD, line("x" * 3000), line("é" * 600))},
        params={"limits": {"max_line_bytes": 1000}},
        reasons={":2": "too_large", ":3": "too_large"},
        kept=1,
    ),
    "jsonl_too_many_messages": Case(
        {
            "u.jsonl": jl(
                GOOD,
                json.dumps({"messages": [{"role": "user", "content": f"q{i}"} for i in range(9)]}),
            )
        },
        params={"limits": {"max_messages": 4}},
        reasons={":2": "too_many_messages"},
        kept=1,
    ),
    "jsonl_scalars_and_nulls": Case(
        {"u.jsonl": jl(GOOD, "null", "42", "true", '"a bare string prompt"', "[1, 2]")},
        reasons={":2": "invalid_row", ":3": "invalid_row", ":4": "invalid_row"},
        kept=2,
    ),
    "jsonl_nan_and_huge_numbers": Case(
        {"u.jsonl": jl(GOOD, '{"prompt": NaN}', '{"prompt": 1e999999}', '{"prompt": -Infinity}')},
        kept=1,
    ),
    "jsonl_messages_wrong_shapes": Case(
        {
            "u.jsonl": jl(
                GOOD,
                '{"messages": "not json ["}',
                '{"messages": [{"role": "user"}]}',
                '{"messages": [{"role": "user", "content": {"a": 1}}]}',
                '{"messages": {}}',
            )
        },
        kept=1,
    ),
    "jsonl_duplicates": Case({"u.jsonl": jl(GOOD, GOOD, GOOD.replace("2 + 2", "2  + 2"))}, kept=1),
    "jsonl_pii_in_rejects_is_redacted": Case(
        {"u.jsonl": jl(GOOD, '{"prompt": "mail a@example.com, card 4111 1111 1111 1111"')},
        reasons={":2": "invalid_json"},
        kept=1,
    ),
    # ------------------------------------------------------------------ CSV
    "csv_good": Case({"u.csv": (CSV_HEAD + "What is 1?,u1\nWhat is 2?,u2\n").encode()}, kept=2),
    "csv_unterminated_quote": Case(
        {"u.csv": (CSV_HEAD + 'a,u1\n"b never closed,u2\nc,u3\nd,u4\ne,u5\n').encode()},
        reasons={":3": "unterminated_quote"},
        kept=4,
    ),
    "csv_unterminated_quote_last_line": Case(
        {"u.csv": (CSV_HEAD + 'a,u1\nb,"u2\n').encode()},
        reasons={":3": "unterminated_quote"},
        kept=1,
    ),
    "csv_text_after_closing_quote": Case(
        {"u.csv": (CSV_HEAD + 'a,u1\n"b"x,u2\nc,u3\n').encode()},
        reasons={":3": "invalid_csv"},
        kept=2,
    ),
    "csv_extra_cell": Case(
        {"u.csv": (CSV_HEAD + "a,u1\nb,u2,extra\nc,u3\n").encode()},
        reasons={":3": "wrong_column_count"},
        kept=2,
    ),
    "csv_missing_cell": Case(
        {"u.csv": (CSV_HEAD + "a,u1\nb\nc,u3\n").encode()},
        reasons={":3": "wrong_column_count"},
        kept=2,
    ),
    "csv_multiline_quoted_cell": Case(
        {"u.csv": (CSV_HEAD + 'a,u1\n"line one\nline two",u2\nc,u3\n').encode()},
        continuation={"u.csv": 1},
        kept=3,
    ),
    "csv_crlf": Case({"u.csv": (CSV_HEAD + "a,u1\nb,u2\n").replace("\n", "\r\n").encode()}, kept=2),
    "csv_bom_header": Case({"u.csv": b"\xef\xbb\xbf" + (CSV_HEAD + "a,u1\n").encode()}, kept=1),
    "csv_blank_line": Case(
        {"u.csv": (CSV_HEAD + "a,u1\n\nb,u2\n").encode()}, reasons={":3": "empty"}, kept=2
    ),
    "csv_invalid_utf8_line": Case(
        {"u.csv": CSV_HEAD.encode() + b"a,u1\ncaf\xe9,u2\nc,u3\n"},
        reasons={":3": "invalid_encoding"},
        kept=2,
    ),
    "csv_bare_cr_in_unquoted_cell": Case(
        {"u.csv": (CSV_HEAD + "a,u1\nb\rb,u2\nc,u3\n").encode()},
        reasons={":3": "invalid_csv"},
        kept=2,
    ),
    "csv_nul_in_cell": Case({"u.csv": (CSV_HEAD + "a,u1\nb\x00,u2\n").encode()}, kept=None),
    "csv_u2028_in_cell": Case({"u.csv": (CSV_HEAD + "a\u2028b,u1\nc,u2\n").encode()}, kept=2),
    "csv_semicolon_delimiter": Case(
        {"u.csv": b"prompt;user\na;u1\nb;u2\n"},
        sources={"u": {"filepath": "u.csv", "load_args": {"delimiter": ";"}}},
        kept=2,
    ),
    "csv_header_only": Case({"u.csv": CSV_HEAD.encode()}, stops="u.csv"),
    "csv_mapped_column_missing": Case(
        {"u.csv": b"question,user\na,u1\n"},
        params={"files": {"u": {"mapping": {"prompt": "prompt_text"}}}},
        stops="u.csv",
    ),
    # ------------------------------------------------------------------ parquet
    "parquet_good": Case({"u.parquet": parquet(pd.DataFrame({"prompt": ["a", "b"]}))}, kept=2),
    "parquet_null_and_non_string": Case(
        {"u.parquet": parquet(pd.DataFrame({"prompt": ["a", None, "c"], "n": [1, 2, 3]}))},
        reasons={"row 2": "empty"},
        kept=2,
    ),
    "parquet_int_prompts": Case(
        {"u.parquet": parquet(pd.DataFrame({"prompt": [1, 2]}))},
        reasons={"row 1": "invalid_row", "row 2": "invalid_row"},
        kept=0,
    ),
    "parquet_nested_messages": Case(
        {
            "u.parquet": parquet(
                pd.DataFrame({"messages": [[{"role": "user", "content": "hi"}], []]})
            )
        },
        kept=1,
    ),
    "parquet_cell_over_max_bytes": Case(
        {"u.parquet": parquet(pd.DataFrame({"prompt": ["a", "x" * 5000]}))},
        params={"limits": {"max_line_bytes": 1000}},
        reasons={"row 2": "too_large"},
        kept=1,
    ),
    "parquet_corrupt": Case({"u.parquet": b"PAR1 not really parquet"}, stops="u.parquet"),
    "parquet_zero_rows": Case(
        {"u.parquet": parquet(pd.DataFrame({"prompt": pd.Series([], dtype=str)}))},
        stops="u.parquet",
    ),
    # ------------------------------------------------------------------ files, links, folders
    "empty_file": Case({"u.jsonl": b""}, stops="u.jsonl"),
    "empty_file_beside_a_good_one": Case({"a.jsonl": b"", "b.jsonl": jl(GOOD)}, kept=1),
    "symlink_to_file_is_followed": Case(
        {"real.jsonl": jl(GOOD), "link.jsonl": b"->real.jsonl"},
        sources={"u": "link.jsonl"},
        kept=1,
    ),
    "broken_symlink_stops": Case(
        {"link.jsonl": b"->gone.jsonl"}, sources={"u": "link.jsonl"}, stops="link.jsonl"
    ),
    "broken_symlink_in_directory_stops": Case(
        {"d/a.jsonl": jl(GOOD), "d/link.jsonl": b"->gone.jsonl"},
        sources={"u": "d"},
        stops="link.jsonl",
    ),
    "missing_file_stops": Case({}, sources={"u": "nope.jsonl"}, stops="nope.jsonl"),
    "directory_of_mixed_formats": Case(
        {
            "d/a.jsonl": jl(GOOD, "not json"),
            "d/b.csv": (CSV_HEAD + "b,u1\n").encode(),
            "d/c.parquet": parquet(pd.DataFrame({"prompt": ["c"], "extra": [1]})),
            "d/README.txt": b"not usage data\n",
            "d/sub/e.jsonl": jl(line("e")),
            "d/link.jsonl": b"->../outside.jsonl",
            "outside.jsonl": jl(line("f")),
        },
        sources={"u": "d"},
        reasons={"a.jsonl:2": "invalid_json"},
        kept=5,
    ),
    "directory_mixed_schemas_messages_and_prompt": Case(
        {
            "d/a.jsonl": jl(chat("one")),
            "d/b.csv": (CSV_HEAD + "two,u\n").encode(),
            "d/c.jsonl": jl(line("three", user="u")),
        },
        sources={"u": "d"},
        kept=3,
    ),
    "directory_schema_without_mapped_column_stops": Case(
        {"d/a.csv": (CSV_HEAD + "a,u\n").encode(), "d/b.csv": b"question,user\nb,u\n"},
        sources={"u": "d"},
        stops="b.csv",
    ),
    "empty_directory_stops": Case({"d/.keep": b""}, sources={"u": "d"}, stops="d"),
}


# ----------------------------------------------------------------------------- independent counts


def independent_count(path: Path, continuation: int) -> int:
    """Rows in one file by simple per-format logic (never the reader's)."""
    if path.suffix == ".parquet":
        return pq.read_metadata(path).num_rows
    data = path.read_bytes()
    newline = "\n".encode("utf-16-le") if data[:2] in (b"\xff\xfe",) else b"\n"
    lines = data.count(newline) + (1 if data and not data.endswith(newline) else 0)
    return lines - (1 if path.suffix == ".csv" else 0) - continuation


def write_files(root: Path, files: dict[str, bytes]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content.startswith(b"->"):
            os.symlink(content[2:].decode(), path)
        else:
            path.write_bytes(content)


def counted_files(root: Path, sources: dict[str, Any]) -> list[Path]:
    out = []
    for spec in sources.values():
        path = root / (spec if isinstance(spec, str) else spec["filepath"])
        found = sorted(path.rglob("*")) if path.is_dir() else [path]
        out += [p for p in found if p.suffix in (".jsonl", ".csv", ".parquet") and p.is_file()]
    return out


def params(**overrides: Any) -> IngestParams:
    base: dict[str, Any] = {"traces": {"enabled": False}, "max_prompt_tokens": None}
    return IngestParams.model_validate({**base, **overrides})


def char_tokens(conversations):
    return [sum(len(m["content"]) for m in c) // 4 + 1 for c in conversations]


def run_ingest(root: Path, case: Case):
    sources = case.sources or {Path(n).stem: n for n in case.files if "/" not in n}
    absolute = {
        name: str(root / spec)
        if isinstance(spec, str)
        else {**spec, "filepath": str(root / spec["filepath"])}
        for name, spec in sources.items()
    }
    cfg = params(**case.params)
    rows = parse_sources(UsageFilesDataset(sources=absolute).load(), {}, cfg)
    return sources, rows, cfg, clean_rows(rows, cfg, char_tokens)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_accounted_for_or_stops_naming_the_file(name, tmp_path):
    case = CASES[name]
    write_files(tmp_path, case.files)
    if case.stops:
        with pytest.raises(UserError) as stopped:
            run_ingest(tmp_path, case)
        message = str(stopped.value)
        assert case.stops in message and "\n" not in message
        return
    sources, rows, cfg, (prompts, rejects, counts) = run_ingest(tmp_path, case)
    expected = sum(
        independent_count(p, case.continuation.get(p.name, 0))
        for p in counted_files(tmp_path, sources)
    )
    assert counts["read"] == expected == len(rows)
    assert counts["read"] == counts["kept"] + counts["rejected"] + counts["deduplicated"]
    assert len(prompts) + len(rejects) == expected
    if case.kept is not None:
        assert counts["kept"] == case.kept
    found = dict(zip(rejects.location, rejects.reason, strict=True))
    for suffix, reason in case.reasons.items():
        assert [r for loc, r in found.items() if loc.endswith(suffix)] == [reason], (suffix, found)
    assert rejects.reason.notna().all() and rejects.location.str.contains(":").all()
    for text in [*rejects.raw, *rejects.detail.astype(str)]:
        text.encode("utf-8")  # storable: no lone surrogates left
        assert "@example.com" not in text and "4111 1111" not in text
    if len(prompts):
        prompts.to_parquet(tmp_path / "prompts.parquet")  # storable as the catalog saves it
    rejects.to_parquet(tmp_path / "rejects.parquet")


def test_unterminated_quote_and_u2028_regressions(tmp_path):
    """The two measured failures: an open quote swallowed every later row; U+2028 split lines."""
    write_files(tmp_path, CASES["csv_unterminated_quote"].files)
    _, rows, _, (prompts, rejects, _) = run_ingest(tmp_path, CASES["csv_unterminated_quote"])
    assert [r["messages"][0]["content"] for r in rows if r["messages"]] == ["a", "c", "d", "e"]
    assert rejects.detail.iloc[0].endswith("(lines 3-6)")
    write_files(tmp_path, CASES["jsonl_u2028_u2029_u0085_in_strings"].files)
    _, rows, _, (prompts, _, _) = run_ingest(tmp_path, CASES["jsonl_u2028_u2029_u0085_in_strings"])
    # whole lines, each one row; stored rows are already normalised (and PII-redacted), which
    # turns the separators into spaces
    assert [r["messages"][0]["content"] for r in rows][:2] == ["first second", "a b c"]
    assert len(prompts) == 3


def test_rejects_keep_a_redacted_raw(tmp_path):
    case = CASES["jsonl_pii_in_rejects_is_redacted"]
    write_files(tmp_path, case.files)
    _, rows, _, (_, rejects, _) = run_ingest(tmp_path, case)
    assert rejects.raw.iloc[0] == '{"prompt": "mail [EMAIL], card [CARD]"'
    assert rows[1]["raw"] == rejects.raw.iloc[0]  # ingest_rows (stored between nodes) too


# ----------------------------------------------------------------------------- traces


TRACE_CASES = {
    "good": (trace_log(chat("a"), chat("b")), {}),
    "bad_request_json": (trace_log(chat("a"), "{not json"), {"tr-1": "invalid_json"}),
    "no_messages": (trace_log(chat("a"), json.dumps({"prompt": "x"})), {"tr-1": "missing_field"}),
    "null_request": (trace_log(chat("a"), None), {"tr-1": "missing_field"}),
    "deep_request": (
        trace_log(chat("a"), '{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}"),
        {"tr-1": "too_deep"},
    ),
    "lone_surrogate": (
        trace_log(chat("a"), '{"messages": [{"role": "user", "content": "\\ud800"}]}'),
        {"tr-1": "invalid_text"},
    ),
    "other_root_span": (
        trace_log(chat("a"), chat("b"), root_span=["chat_completion", "other"]),
        {"tr-1": "invalid_row"},
    ),
    "bad_response_and_feedback": (
        trace_log(chat("a"), chat("b"), response=["{broken", "null"], feedback=["[]", "{broken"]),
        {"tr-1": "invalid_json"},
    ),
}


@pytest.mark.parametrize("name", list(TRACE_CASES))
def test_bad_traces_are_accounted_for(name, tmp_path):
    frame, reasons = TRACE_CASES[name]
    cfg = params(traces={"enabled": True})
    rows = parse_sources({}, {"0000000000001-x": lambda: frame}, cfg)
    prompts, rejects, counts = clean_rows(rows, cfg, char_tokens)
    assert counts["read"] == len(frame) == counts["kept"] + counts["rejected"]
    assert dict(zip(rejects.location, rejects.reason, strict=True)) == reasons
    rejects.to_parquet(tmp_path / "rejects.parquet")
