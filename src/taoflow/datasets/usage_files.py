"""Catalog datasets of the ingest stage: raw usage files, the traces watermark, accumulated traces.

``UsageFilesDataset`` only reads: it turns each configured file into located rows (``file:line``)
without interpreting them, so a broken line becomes a reject in the node instead of a load error.
Structure that is broken for one row (bytes not in the declared encoding, an unterminated quote,
a CSV row with the wrong number of cells, a blank line) is a :class:`RowProblem` at that row's
location; reading resumes at the next line, so one bad row never swallows or hides the others.
What stops the run names the file: a missing file, an unreadable table, an unreadable CSV header.

JSONL is split on ``\n`` only (``\r\n`` too): U+2028, U+2029 and U+0085 are legal raw characters
inside JSON strings. A source may be a directory: every file in it with a known suffix is read,
in path order, each with its own header (mixed schemas across files are fine); dot-files are
skipped. Symbolic links to files are followed (a configured path or a file inside a directory); a
broken one stops the run naming the link; links to directories inside a directory are not
descended into, so a link loop cannot make a read endless.
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import fsspec
import pandas as pd
from kedro.io import AbstractDataset, DatasetError
from kedro_datasets.partitions import PartitionedDataset

from taoflow.datasets.atomic import JSONDataset
from taoflow.errors import UserError

logger = logging.getLogger(__name__)

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
_CSV_READER_ARGS = {
    "delimiter",
    "quotechar",
    "escapechar",
    "doublequote",
    "skipinitialspace",
    "quoting",
    "dialect",
}


class UsageFileError(UserError, DatasetError):
    """A usage file that cannot be read at all; the message names it and says what to change."""


@dataclass(frozen=True)
class RowProblem:
    """A row whose structure is broken: ingest rejects it with ``reason`` at its location."""

    reason: str
    detail: str
    raw: str


@dataclass
class RawSource:
    """One usage file as located rows: ``payload`` is the raw line (JSONL), a column dict, or a
    :class:`RowProblem`. A directory source holds one ``RawSource`` per file in ``parts``."""

    name: str
    path: str
    format: str
    rows: list[tuple[str, Any]] = field(default_factory=list)
    columns: list[str] | None = None  # tabular formats: the header, to check the mapping against
    parts: list[RawSource] | None = None

    def files(self) -> list[RawSource]:
        """The single-file sources this one stands for (itself, or a directory's files)."""
        return list(self.parts) if self.parts is not None else [self]


class UsageFilesDataset(AbstractDataset[None, dict[str, RawSource]]):
    """Read-only: ``{source_name: RawSource}`` for every file or directory under ``sources``.

    Each source is a path (format from the suffix) or ``{filepath, format, encoding, load_args}``;
    ``load_args`` go to ``csv.reader`` (dialect arguments, plus ``fieldnames`` for a file without
    a header line) or ``pandas.read_parquet``.
    """

    def __init__(
        self,
        sources: dict[str, str | dict[str, Any]],
        encoding: str = "utf-8-sig",
        metadata: dict[str, Any] | None = None,
    ):
        if not sources:
            raise UsageFileError("UsageFilesDataset needs at least one entry under 'sources'.")
        self._sources = {}
        for name, spec in sources.items():
            spec = {"filepath": spec} if isinstance(spec, str) else dict(spec)
            if "filepath" not in spec:
                raise UsageFileError(f"Usage source '{name}' has no 'filepath'.")
            fmt = spec.get("format")
            if fmt is None and PurePosixPath(spec["filepath"]).suffix:
                fmt = _format_of(name, spec["filepath"])
            if fmt is not None and fmt not in set(FORMATS.values()):
                raise UsageFileError(_unknown_format(name, spec["filepath"], fmt))
            spec["format"] = fmt
            spec.setdefault("encoding", encoding)
            spec.setdefault("load_args", {})
            self._sources[name] = spec
        self.metadata = metadata

    def load(self) -> dict[str, RawSource]:
        return {name: self._read(name, spec) for name, spec in self._sources.items()}

    def save(self, data: None) -> None:
        raise DatasetError("UsageFilesDataset is read-only: raw usage files are never rewritten.")

    def _describe(self) -> dict[str, Any]:
        return {name: spec["filepath"] for name, spec in self._sources.items()}

    def _exists(self) -> bool:
        return all(
            fsspec.open(s["filepath"]).fs.exists(s["filepath"]) for s in self._sources.values()
        )

    @staticmethod
    def _read(name: str, spec: dict[str, Any]) -> RawSource:
        path = spec["filepath"]
        fs = fsspec.open(path, "rb").fs
        if not fs.exists(path):
            broken = os.path.islink(path)
            raise UsageFileError(
                f"Usage source '{name}': "
                + (f"{path} is a broken symbolic link" if broken else f"file {path} does not exist")
                + "; fix its path in the catalog entry 'usage_files'."
            )
        if not fs.isdir(path):
            fmt = spec["format"] or _format_of(name, path)
            return read_usage_file(name, path, fmt, spec["encoding"], spec["load_args"])
        found = [str(f) for f in fs.find(path) if not PurePosixPath(f).name.startswith(".")]
        broken = [f for f in found if os.path.islink(f) and not os.path.exists(f)]
        if broken:
            raise UsageFileError(
                f"Usage source '{name}': {broken[0]} is a broken symbolic link; fix or remove it."
            )
        files = sorted(f for f in found if fs.isfile(f))
        known = [f for f in files if spec["format"] or PurePosixPath(f).suffix.lower() in FORMATS]
        if len(known) < len(files):
            logger.warning(
                "Usage source '%s': skipped %d file(s) in %s without a known suffix (%s): %s",
                name,
                len(files) - len(known),
                path,
                ", ".join(sorted(FORMATS)),
                ", ".join(sorted(set(files) - set(known))[:5]),
            )
        if not known:
            raise UsageFileError(
                f"Usage source '{name}': directory {path} holds no usage file "
                f"({', '.join(sorted(FORMATS))}); add files or fix its path."
            )
        parts = [
            read_usage_file(
                name, f, spec["format"] or _format_of(name, f), spec["encoding"], spec["load_args"]
            )
            for f in known
        ]
        return RawSource(name=name, path=path, format="directory", parts=parts)


def _format_of(name: str, path: str) -> str:
    suffix = PurePosixPath(path).suffix.lower()
    if suffix not in FORMATS:
        raise UsageFileError(_unknown_format(name, path, suffix or None))
    return FORMATS[suffix]


def _unknown_format(name: str, path: str, fmt: Any) -> str:
    return (
        f"Usage source '{name}' ({path}): unknown format {fmt!r}; "
        f"set 'format' to one of {sorted(set(FORMATS.values()))}."
    )


def read_usage_file(
    name: str, path: str, fmt: str, encoding: str, load_args: dict[str, Any]
) -> RawSource:
    """One file → located rows (see the module docstring for what becomes a ``RowProblem``)."""
    with fsspec.open(path, "rb") as handle:
        data = handle.read()
    source = RawSource(name=name, path=path, format=fmt)
    if fmt == "parquet":
        try:
            frame = pd.read_parquet(io.BytesIO(data), **load_args)
        except Exception as err:  # noqa: BLE001 - pyarrow raises several types
            raise UsageFileError(
                f"Usage source '{name}': {path} is not readable parquet "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})."
            ) from err
        source.columns = [str(c) for c in frame.columns]
        source.rows = [
            (f"{path}:row {i + 1}", row) for i, row in enumerate(frame.to_dict(orient="records"))
        ]
        return source
    lines = _decoded_lines(data, encoding, name, path)
    if fmt == "jsonl":
        source.rows = [(f"{path}:{number}", line) for number, line in lines]
    else:
        source.columns, source.rows = _csv_rows(lines, dict(load_args), name, path)
    return source


def _decoded_lines(data: bytes, encoding: str, name: str, path: str) -> list[tuple[int, Any]]:
    """``(line number, text)`` per ``\n``-terminated line; an undecodable line is a RowProblem.

    Lines are decoded one by one so a bad byte costs one row; encodings that are not ASCII
    supersets (UTF-16/32) are decoded whole, and a bad byte there stops the run naming the line.
    """
    codec = codecs.lookup(encoding).name
    if not data:
        return []
    if codec.startswith(("utf-16", "utf-32")):
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError as err:
            line = data[: err.start].count("\n".encode(encoding)[-2:]) + 1
            raise UsageFileError(
                f"Usage source '{name}': {path} line {line} is not valid {encoding}; re-encode "
                f"the file or set its 'encoding' in the catalog."
            ) from err
        pieces: list[Any] = text.split("\n")
        if text.endswith("\n"):
            pieces.pop()
        return [(i, p.removesuffix("\r")) for i, p in enumerate(pieces, 1)]
    raw_lines = data.split(b"\n")
    if data.endswith(b"\n"):
        raw_lines.pop()
    out: list[tuple[int, Any]] = []
    for number, raw in enumerate(raw_lines, 1):
        raw = raw.removesuffix(b"\r")
        try:
            text = raw.decode(encoding if number == 1 else encoding.replace("-sig", ""))
        except UnicodeDecodeError as err:
            shown = raw.decode(encoding.replace("-sig", ""), errors="backslashreplace")
            detail = (
                f"not valid {encoding}: byte {raw[err.start : err.start + 1]!r} at column "
                f"{err.start + 1}; re-encode the file or set its 'encoding' in the catalog"
            )
            out.append((number, RowProblem("invalid_encoding", detail, shown)))
            continue
        out.append((number, text))
    return out


def _csv_rows(
    lines: list[tuple[int, Any]], load_args: dict[str, Any], name: str, path: str
) -> tuple[list[str], list[tuple[str, Any]]]:
    """Header + one located payload per CSV record; a broken record is a RowProblem at its line.

    Records are parsed one at a time with ``strict=True``; after a broken one (an unterminated
    quote, text after a closing quote) parsing resumes at the line after the record's first line,
    so an open quote rejects one row instead of merging every following row into it.
    """
    fieldnames = load_args.pop("fieldnames", None)
    unknown = set(load_args) - _CSV_READER_ARGS
    if unknown:
        raise UsageFileError(
            f"Usage source '{name}' ({path}): unknown CSV load_args {sorted(unknown)}; "
            f"valid: {sorted(_CSV_READER_ARGS | {'fieldnames'})}."
        )
    start = 0
    if fieldnames is None:
        if not lines:
            return [], []
        number, first = lines[0]
        record, used, _ = (
            _next_record(lines, 0, load_args) if isinstance(first, str) else (None, 0, None)
        )
        if record is None:
            raise UsageFileError(
                f"Usage source '{name}': {path} line {number} (the header) is not valid CSV; "
                f"fix the header or set 'fieldnames' in the source's load_args."
            )
        fieldnames, start = record, used
    header = [str(f) for f in fieldnames]
    rows: list[tuple[str, Any]] = []
    i = start
    while i < len(lines):
        number, text = lines[i]
        location = f"{path}:{number}"
        if isinstance(text, RowProblem):
            rows.append((location, text))
            i += 1
            continue
        if not text.strip():
            rows.append((location, RowProblem("empty", "blank line", text)))
            i += 1
            continue
        record, used, err = _next_record(lines, i, load_args)
        if err is not None or record is None:
            end = lines[min(i + max(used, 1), len(lines)) - 1][0]
            span = f"line {number}" if end == number else f"lines {number}-{end}"
            reason = "unterminated_quote" if "end of data" in str(err) else "invalid_csv"
            rows.append((location, RowProblem(reason, f"{err} ({span})", text)))
            i += 1
            continue
        raw = "\n".join(str(t) for _, t in lines[i : i + used])
        if len(record) != len(header):
            detail = f"{len(record)} cell(s) where the header has {len(header)}"
            rows.append((location, RowProblem("wrong_column_count", detail, raw)))
        else:
            rows.append((location, dict(zip(header, record, strict=True))))
        i += used
    return header, rows


def _line_feed(lines: list[tuple[int, Any]], i: int, counter: list[int]) -> Iterator[str]:
    """Physical lines from ``i`` for ``csv.reader``, stopping at a line that did not decode."""
    for _, text in lines[i:]:
        if not isinstance(text, str):
            return
        counter[0] += 1
        yield text + "\n"


def _next_record(
    lines: list[tuple[int, Any]], i: int, load_args: dict[str, Any]
) -> tuple[list[str] | None, int, csv.Error | None]:
    """The CSV record starting at line index ``i``, how many lines it used, and its error."""
    counter = [0]
    reader = csv.reader(_line_feed(lines, i, counter), strict=True, **load_args)
    try:
        return next(reader, None), counter[0], None
    except csv.Error as err:
        return None, counter[0], err


class JSONStateDataset(JSONDataset):
    """A JSON file that loads as ``default`` (``{}``) before it was first written.

    Holds run-to-run state such as the traces watermark: the first run has none yet.
    """

    def __init__(self, *, filepath: str, default: Any = None, **kwargs: Any):
        super().__init__(filepath=filepath, **kwargs)
        self._default = {} if default is None else default

    def load(self) -> Any:
        if not self._exists():
            return self._default
        return super().load()


class AppendPartitionsDataset(PartitionedDataset):
    """A ``PartitionedDataset`` that accumulates: saves add partitions, loads see all (none → ``{}``).

    Trace requests are fetched incrementally; keeping every fetched batch means a re-run after a
    failure downstream still sees the prompts a previous run already took past the watermark.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs["overwrite"] = False
        kwargs.setdefault("filename_suffix", ".parquet")
        super().__init__(*args, **kwargs)

    def load(self) -> dict[str, Any]:
        self._invalidate_caches()
        if not self._list_partitions():
            return {}
        return dict(sorted(super().load().items()))
