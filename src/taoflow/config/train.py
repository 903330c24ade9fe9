"""``train``: which TRL trainer turns scores into weights, and every knob it gets.

Trainer knobs pass through to TRL's config classes under TRL's own names (the alignment-handbook
way): ``train.trainer`` holds what every algorithm shares (``transformers.TrainingArguments``
fields, plus ``max_length`` for the offline trainers), ``train.<algorithm>`` our selection knobs
plus any field of that algorithm's TRL config. Each passthrough block is a pydantic model built
from the TRL dataclass's field names, so a typo is an unknown key like any other, and a knob not
set in YAML keeps TRL's own default (nothing here mirrors one).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import sys
from functools import cache
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, create_model, model_validator

from taoflow.config.base import StrictModel
from taoflow.core.ids import stable_hash

Algorithm = Literal["dpo", "rft", "kto", "grpo"]
ALGORITHMS: tuple[str, ...] = ("dpo", "rft", "kto", "grpo")
# The TRL config class each algorithm builds (rft trains with SFTTrainer).
TRL_CONFIGS: dict[str, str] = {
    "dpo": "DPOConfig",
    "rft": "SFTConfig",
    "kto": "KTOConfig",
    "grpo": "GRPOConfig",
}
# Set by taoflow for every run (checkpoint folder, derived seeds): never from YAML.
RESERVED = frozenset({"output_dir", "logging_dir", "seed", "data_seed"})


@cache
def trl_config_class(algorithm: str) -> type:
    """``trl.DPOConfig`` / ``SFTConfig`` / ``KTOConfig`` / ``GRPOConfig`` for an algorithm."""
    import trl

    return getattr(trl, TRL_CONFIGS[algorithm])


def dataclass_fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


# The library config classes whose field names the passthrough blocks accept.
FIELD_SOURCES: dict[str, str] = {
    **{algorithm: f"trl:{name}" for algorithm, name in TRL_CONFIGS.items()},
    "trainer": "transformers:TrainingArguments",
    "lora": "peft:LoraConfig",
}


def _library_class(source: str) -> type:
    import importlib

    module, name = source.split(":")
    return getattr(importlib.import_module(module), name)


def _fields_cache_file() -> Path:
    """One file per (TRL, transformers, PEFT versions, environment): an upgrade misses."""
    versions = []
    for library in ("trl", "transformers", "peft"):
        try:
            versions.append(f"{library}={importlib.metadata.version(library)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{library}=absent")
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "taoflow"
    return root / f"config-fields-{stable_hash([versions, sys.prefix, FIELD_SOURCES])}.json"


@cache
def library_fields() -> dict[str, list[str]]:
    """Field names of the library config classes (``FIELD_SOURCES``), cached on disk.

    Reading them means importing TRL (and so transformers and torch), seconds that every
    ``kedro`` command would pay to validate ``train``; the names only change with the
    libraries' versions, which key the cache file.
    """
    path = _fields_cache_file()
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    fields = {
        key: sorted(dataclass_fields(_library_class(source)))
        for key, source in FIELD_SOURCES.items()
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(fields))
        tmp.replace(path)
    except OSError:  # a read-only home: computed again next time
        pass
    return fields


@cache
def trl_field_names(algorithm: str) -> frozenset[str]:
    return frozenset(library_fields()[algorithm])


@cache
def trainer_field_names() -> frozenset[str]:
    """``train.trainer`` keys: TrainingArguments fields + what all offline TRL configs share."""
    offline = frozenset.intersection(*(trl_field_names(a) for a in ("dpo", "rft", "kto")))
    return frozenset(library_fields()["trainer"]) | offline


def trl_default(cls: type, name: str) -> Any:
    """TRL's (or transformers') own default of a config field."""
    field = dataclass_fields(cls)[name]
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


class Passthrough(StrictModel):
    """Our own fields typed here; every other field is a TRL/PEFT knob passed on as set.

    A base may also type some library knobs (``TYPED``): they keep the library's name and pass
    on only when set, like the untyped ones, but a wrong type or value stops validation.
    """

    OWN: ClassVar[tuple[str, ...]] = ()
    TYPED: ClassVar[tuple[str, ...]] = ()

    def passthrough(self) -> dict[str, Any]:
        """The library knobs the YAML set (unset ones keep the library's default)."""
        return {k: v for k, v in self.model_dump(exclude_unset=True).items() if k not in self.OWN}

    def hashed(self) -> dict[str, Any]:
        """What this block contributes to the run's config hash: own fields + knobs set."""
        own = {k: v for k, v in self.model_dump().items() if k in self.OWN}
        return {**own, **self.passthrough()}


def passthrough_model(name: str, base: type[Passthrough], valid: frozenset[str], doc: str) -> Any:
    """``base`` + one optional field per library knob in ``valid`` (reserved keys excluded)."""
    declared = set(base.model_fields)
    extra = {k: (Any, None) for k in sorted(valid - RESERVED - declared)}
    model = create_model(name, __base__=base, __doc__=doc, **extra)
    model.OWN = tuple(declared - set(base.TYPED))
    return model


class _TrainerBase(Passthrough):
    @model_validator(mode="after")
    def _check(self) -> _TrainerBase:
        values = self.passthrough()
        for key in ("per_device_train_batch_size", "gradient_accumulation_steps"):
            if key in values and int(values[key]) < 1:
                raise ValueError(f"{key} must be >= 1")
        warmup = values.get("warmup_steps")
        if warmup is not None and (warmup < 0 or (warmup >= 1 and not float(warmup).is_integer())):
            raise ValueError("warmup_steps: a ratio in [0, 1) or a whole step count")
        return self


class _DPOBase(Passthrough):
    min_margin: float = Field(0.5, description="pair when reward gap >= this (and > 0)")
    pairs_per_prompt: int = Field(1, ge=1, description="i-th best vs i-th worst, i < this")
    allow_truncated_chosen: bool = Field(False, description="a capped completion may be chosen")


class _RFTBase(Passthrough):
    min_reward: float = Field(0.5, description="keep candidates with reward >= this")
    top_k: int = Field(1, ge=1, description="best candidates kept per prompt")
    dedupe: bool = Field(False, description="drop identical completions before top_k")
    skip_zero_signal: bool = Field(False, description="skip groups whose rewards are all equal")
    allow_truncated: bool = Field(False, description="capped completions may be targets")


class _KTOBase(Passthrough):
    threshold: float = Field(0.5, description="reward >= this: desirable")
    max_per_prompt: int = Field(
        2, ge=1, description="candidates per prompt, best/worst alternating"
    )
    skip_zero_signal: bool = Field(False, description="skip groups whose rewards are all equal")
    allow_truncated: bool = Field(False, description="a capped completion may be desirable")


class _GRPOBase(Passthrough):
    """GRPO's vLLM knobs typed (TRL's names; unset: TRL's default, generation stays in
    transformers). ``colocate``: an engine inside the trainer shares its GPUs; ``server``: the
    trainer asks a separate ``trl vllm-serve`` process and pushes its weights to it each step.
    """

    TYPED: ClassVar[tuple[str, ...]] = (
        "use_vllm",
        "vllm_mode",
        "vllm_server_base_url",
        "vllm_server_host",
        "vllm_server_port",
        "vllm_server_timeout",
        "vllm_group_port",
        "vllm_gpu_memory_utilization",
        "vllm_max_model_length",
        "vllm_tensor_parallel_size",
        "vllm_enable_sleep_mode",
    )
    # None defaults are never passed (only knobs set in YAML are); an explicit null is refused.
    use_vllm: bool = Field(None, description="generate GRPO's completions with vLLM")
    vllm_mode: Literal["colocate", "server"] = Field(
        None, description="colocate: in the trainer's process | server: trl vllm-serve"
    )
    vllm_server_base_url: str = Field(None, description="server mode: URL; else host + port")
    vllm_server_host: str = Field(None, description="server mode: host of trl vllm-serve")
    vllm_server_port: int = Field(None, ge=1, le=65535, description="server mode: its port")
    vllm_server_timeout: float = Field(None, gt=0, description="server mode: seconds to wait")
    vllm_group_port: int = Field(
        None, ge=1, le=65535, description="server mode: weight-sync group port"
    )
    vllm_gpu_memory_utilization: float = Field(
        None, gt=0, le=1, description="colocate: GPU share the engine reserves"
    )
    vllm_max_model_length: int = Field(None, ge=1, description="colocate: context window")
    vllm_tensor_parallel_size: int = Field(None, ge=1, description="colocate: GPUs per engine")
    vllm_enable_sleep_mode: bool = Field(
        None, description="colocate: free the engine's memory while training"
    )

    def hashed(self) -> dict[str, Any]:
        """Without ``use_vllm`` the vLLM knobs change nothing, so they are not hashed either."""
        values = super().hashed()
        if not values.get("use_vllm"):
            values = {k: v for k, v in values.items() if k != "use_vllm" and k[:5] != "vllm_"}
        return values


class _LoraBase(Passthrough):
    enabled: bool = Field(False, description="off: full fine-tuning")
    r: int = Field(16, ge=1, description="adapter rank")
    alpha: int = Field(32, description="scaling numerator (scale = alpha / r)")
    dropout: float = Field(0.05, description="dropout on the adapter input")
    target_modules: list[str] | str = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj"], description="module names, a regex or all-linear"
    )
    save_adapter: bool = Field(True, description="also save the adapter beside merged weights")


@cache
def _peft_lora_fields() -> frozenset[str]:
    # Named by us (r / alpha / dropout / target_modules) or set by taoflow (task_type).
    ours = {"r", "lora_alpha", "lora_dropout", "target_modules", "task_type"}
    return frozenset(library_fields()["lora"]) - ours


TrainerParams = passthrough_model(
    "TrainerParams",
    _TrainerBase,
    trainer_field_names(),
    "Knobs every algorithm shares: TrainingArguments fields (+ max_length), under their names.",
)
DPOParams = passthrough_model(
    "DPOParams", _DPOBase, trl_field_names("dpo"), "Pair selection + any trl.DPOConfig field."
)
RFTParams = passthrough_model(
    "RFTParams", _RFTBase, trl_field_names("rft"), "Candidate selection + any trl.SFTConfig field."
)
KTOParams = passthrough_model(
    "KTOParams", _KTOBase, trl_field_names("kto"), "Labelling + any trl.KTOConfig field."
)
GRPOParams = passthrough_model(
    "GRPOParams", _GRPOBase, trl_field_names("grpo"), "Any trl.GRPOConfig field."
)
LoraParams = passthrough_model(
    "LoraParams", _LoraBase, _peft_lora_fields(), "PEFT LoRA; other peft.LoraConfig fields pass."
)


class EarlyStoppingParams(StrictModel):
    """The collapse guard of online training (``CollapseEarlyStopping``, GRPO ``on_log`` keys)."""

    enabled: bool = Field(True, description="false: record a would-stop reason, never stop")
    reward_key: str = Field("reward", description="GRPO's logged mean reward")
    entropy_key: str = Field("entropy", description="GRPO's logged mean token entropy")
    reward_rise: float = Field(0.2, description="stop when reward is this far above baseline...")
    entropy_ratio: float = Field(0.5, description="...while entropy <= this x its baseline")
    baseline_logs: int = Field(2, ge=1, description="first logs averaged as the baseline")
    patience: int = Field(2, ge=1, description="consecutive collapsing logs before stopping")


class GateParams(StrictModel):
    """Which scored rows are trusted enough to train on, applied before the algorithm selects.

    Every gate is off (null) by default; a rejected row names its gate in ``train_rejects``.
    Columns are read by name so a scorer named otherwise can still feed a gate.
    """

    min_judge_confidence: float | None = Field(
        None, description="drop candidates whose judge confidence is below this"
    )
    min_vote_share: float | None = Field(
        None, description="drop prompts whose majority answer has a smaller share of the group"
    )
    min_reward_margin: float | None = Field(
        None, description="drop prompts whose reward spread (max - min) is below this"
    )
    drop_no_contrast: bool | None = Field(
        None, description="drop prompts left without contrast by the gates above"
    )
    chosen_from: Literal["reward", "judge"] | None = Field(
        None, description="judge: chosen/targets the judge agrees with, rejected ones it rejects"
    )
    judge_score_column: str = Field("score_judge", description="the judge's score in [0, 1]")
    judge_answer_column: str = Field("judge_answer", description="the judge's own answer")
    judge_confidence_column: str = Field("judge_confidence", description="judge confidence")
    judge_agree_score: float = Field(
        0.5, description="without a judge answer: score >= this means the judge agrees"
    )
    vote_share_column: str = Field("agreement", description="the group's majority share")

    @property
    def active(self) -> bool:
        """Whether any gate (or the judge choice) changes the examples."""
        return any(
            value is not None and value is not False and value != "reward"
            for value in (
                self.min_judge_confidence,
                self.min_vote_share,
                self.min_reward_margin,
                self.drop_no_contrast,
                self.chosen_from,
            )
        )

    @property
    def judge_choice(self) -> bool:
        return self.chosen_from == "judge"


class TrainParams(StrictModel):
    """The whole ``params:train`` block."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    algorithm: Algorithm = Field("dpo", description="rft | dpo | kto | grpo")
    output_dir: str = Field("data/06_models/checkpoints", description="<output_dir>/round_<k>")
    resume: bool = Field(True, description="continue from the last checkpoint of the same run")
    keep_checkpoints: bool = Field(False, description="keep the checkpoint folder after success")
    trainer: TrainerParams = TrainerParams()
    dpo: DPOParams = DPOParams()
    rft: RFTParams = RFTParams()
    kto: KTOParams = KTOParams()
    grpo: GRPOParams = GRPOParams()
    lora: LoraParams = LoraParams()
    early_stopping: EarlyStoppingParams = EarlyStoppingParams()
    gates: GateParams = GateParams()
    dpo_reference: Literal["previous", "initial"] = Field(
        "previous", description="dpo reference in round k > 1: the round's input or the base model"
    )

    @property
    def reference_is_initial(self) -> bool:
        """Whether DPO rounds after the first take the base model as their reference."""
        return self.algorithm == "dpo" and self.dpo_reference == "initial"

    @property
    def algo(self) -> Passthrough:
        """The active algorithm's block."""
        return getattr(self, self.algorithm)

    def trl_values(self) -> dict[str, Any]:
        """The active TRL config's knobs set in YAML: trainer, then the algorithm's block.

        ``trainer.max_steps`` >= 0 is a hard cap that wins over the algorithm's own (grpo's).
        """
        valid = trl_field_names(self.algorithm)
        trainer = self.trainer.passthrough()
        values = {k: v for k, v in trainer.items() if k in valid}
        values.update(self.algo.passthrough())
        if trainer.get("max_steps") is not None and trainer["max_steps"] >= 0:
            values["max_steps"] = trainer["max_steps"]
        return values

    def effective(self, name: str) -> Any:
        """A knob as the TRL config will see it: the YAML value, else TRL's default."""
        values = self.trl_values()
        if name in values:
            return values[name]
        return trl_default(trl_config_class(self.algorithm), name)

    @model_validator(mode="after")
    def _check_algorithm(self) -> TrainParams:
        if self.gates.judge_choice and self.algorithm not in ("dpo", "rft"):
            raise ValueError(
                f"gates.chosen_from=judge picks dpo pairs or rft targets; {self.algorithm} has none"
            )
        if self.algorithm == "kto" and self.effective("per_device_train_batch_size") < 2:
            raise ValueError(
                "trainer.per_device_train_batch_size must be >= 2 for kto (its KL term pairs "
                "each completion with another prompt of the batch)"
            )
        if self.algorithm == "grpo":
            generations = self.effective("num_generations")
            batch = self.effective("per_device_train_batch_size")
            if generations < 2:
                raise ValueError("grpo.num_generations must be >= 2 (advantages are relative)")
            if batch % generations:
                raise ValueError(
                    f"grpo.per_device_train_batch_size={batch} must be a multiple of "
                    f"num_generations={generations} (it counts completions)"
                )
        return self

    def config_hash(self, seed: int) -> str:
        """What decides the trained weights, besides the data: the active blocks + the seed."""
        decided = {
            "algorithm": self.algorithm,
            "trainer": self.trainer.passthrough(),
            self.algorithm: self.algo.hashed(),
            "lora": self.lora.hashed(),
            "seed": int(seed),
        }
        if self.reference_is_initial:  # only when set, so today's hashes stay as they are
            decided["dpo_reference"] = self.dpo_reference
        return stable_hash(decided)
