"""Catalog datasets of the ingest stage: raw usage files, the traces watermark, accumulated traces.

``UsageFilesDataset`` only reads: it turns each configured file into located rows (``file:line``)
without interpreting them, so a broken line becomes a reject in the node instead of a load error.
What *is* a load error — a missing file, bytes that are not in the declared encoding, an
unreadable table — names the file (and line) and stops the run.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import fsspec
import pandas as pd
from kedro.io import AbstractDataset, DatasetError
from kedro_datasets.partitions import PartitionedDataset

from taoflow.datasets.atomic import JSONDataset

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}


@dataclass
class RawSource:
    """One usage file as located rows: ``payload`` is the raw line (JSONL) or a column dict."""

    name: str
    path: str
    format: str
    rows: list[tuple[str, Any]] = field(default_factory=list)
    columns: list[str] | None = None  # tabular formats: the header, to check the mapping against


class UsageFilesDataset(AbstractDataset[None, dict[str, RawSource]]):
    """Read-only: ``{source_name: RawSource}`` for every file under ``sources``.

    Each source is a path (format from the suffix) or ``{filepath, format, encoding, load_args}``;
    ``load_args`` go to ``csv.DictReader`` or ``pandas.read_parquet``.
    """

    def __init__(
        self,
        sources: dict[str, str | dict[str, Any]],
        encoding: str = "utf-8-sig",
        metadata: dict[str, Any] | None = None,
    ):
        if not sources:
            raise DatasetError("UsageFilesDataset needs at least one entry under 'sources'.")
        self._sources = {}
        for name, spec in sources.items():
            spec = {"filepath": spec} if isinstance(spec, str) else dict(spec)
            if "filepath" not in spec:
                raise DatasetError(f"Usage source '{name}' has no 'filepath'.")
            fmt = spec.get("format") or FORMATS.get(PurePosixPath(spec["filepath"]).suffix.lower())
            if fmt not in set(FORMATS.values()):
                raise DatasetError(
                    f"Usage source '{name}' ({spec['filepath']}): unknown format {fmt!r}; "
                    f"set 'format' to one of {sorted(set(FORMATS.values()))}."
                )
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
        path, fmt = spec["filepath"], spec["format"]
        opener = fsspec.open(path, "rb")
        if not opener.fs.exists(path):
            raise DatasetError(f"Usage source '{name}': file {path} does not exist.")
        with opener as handle:
            data = handle.read()
        source = RawSource(name=name, path=path, format=fmt)
        if fmt == "parquet":
            try:
                frame = pd.read_parquet(io.BytesIO(data), **spec["load_args"])
            except Exception as err:  # noqa: BLE001 - pyarrow raises several types
                raise DatasetError(
                    f"Usage source '{name}': {path} is not readable parquet: {err}"
                ) from err
            source.columns = [str(c) for c in frame.columns]
            source.rows = [
                (f"{path}:row {i + 1}", row)
                for i, row in enumerate(frame.to_dict(orient="records"))
            ]
            return source
        text = _decode(data, spec["encoding"], name, path)
        if fmt == "jsonl":
            source.rows = [(f"{path}:{i}", line) for i, line in enumerate(text.splitlines(), 1)]
            return source
        reader = csv.DictReader(io.StringIO(text, newline=""), **spec["load_args"])
        try:
            source.columns = list(reader.fieldnames or [])
            start = reader.line_num + 1
            for row in reader:
                extra = row.pop(None, None)  # more cells than header names
                if extra:
                    row["__extra_cells__"] = extra
                source.rows.append((f"{path}:{start}", row))
                start = reader.line_num + 1
        except csv.Error as err:
            raise DatasetError(
                f"Usage source '{name}': {path} line {reader.line_num} is not valid CSV: {err}"
            ) from err
        return source


def _decode(data: bytes, encoding: str, name: str, path: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DatasetError(
            f"Usage source '{name}': {path} line {line} is not valid {encoding} "
            f"(byte {data[err.start : err.start + 1]!r} at offset {err.start}); re-encode the "
            f"file or set its 'encoding' in the catalog."
        ) from err


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
