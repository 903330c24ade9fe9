"""``launch``: where the training stages run their TRL trainer — this process, or a multi-process
``accelerate launch`` child (DDP, FSDP, DeepSpeed ZeRO-3) while Kedro, the catalog and MLflow
stay in the parent (:mod:`taoflow.training.launch`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from taoflow.config.base import StrictModel


class LaunchParams(StrictModel):
    """The whole ``params:launch`` block (read by train, sft_oracle, judge_distill, reward_model)."""

    mode: Literal["in_process", "accelerate"] = Field(
        "in_process", description="in_process | accelerate (a subprocess per training)"
    )
    config_file: str = Field(
        "conf/accelerate/ddp_cpu.yaml", description="accelerate config, relative to the project"
    )
    num_processes: int | None = Field(
        None, ge=1, description="processes in all; None: the config file's num_processes"
    )
    main_process_port: int | None = Field(
        None, ge=1, le=65535, description="rendezvous port; None: a free one is picked"
    )
    extra_args: list[str] = Field(
        default_factory=list, description="more `accelerate launch` flags, passed as written"
    )
    work_dir: str | None = Field(
        None, description="where the hand-over files go; None: a temporary folder, removed after"
    )
    log_tail_lines: int = Field(20, ge=1, description="lines of the child's log a failure shows")

    @property
    def distributed(self) -> bool:
        """Whether training runs under ``accelerate launch``."""
        return self.mode == "accelerate"
