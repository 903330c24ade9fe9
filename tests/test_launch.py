"""``launch``: the trainer under ``accelerate launch`` (real 2-process DDP on CPU, gloo).

The DDP test runs in the default suite with two steps; ``make check-ddp`` runs this file with
``TAOFLOW_CHECK_DDP=1``: more steps, dpo with LoRA and kto too, and the sft_oracle and
reward_model nodes launched.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from taoflow.config.base import ParameterError, validate_block
from taoflow.config.launch import LaunchParams
from taoflow.config.train import TrainParams
from taoflow.core.ids import frame_hash
from taoflow.datasets import PolicyDataset
from taoflow.models import load_policy
from taoflow.promotion import LINEAGE_FIELDS
from taoflow.training import build_examples, check_lineage, train_policy
from taoflow.training.launch import (
    RANKS_DIR,
    LaunchError,
    accelerate_command,
    check_ranks,
    failure_summary,
    run_job,
    weights_hash,
)
from tests.conftest import PROJECT_ROOT
from tests.test_reward_model import tiny_encoder  # noqa: F401 - fixture
from tests.test_train import TASK, make_prompts, make_scored, tiny_params

ACCELERATE_DIR = PROJECT_ROOT / "conf" / "accelerate"
DDP_CPU = str(ACCELERATE_DIR / "ddp_cpu.yaml")
FULL_CHECK = os.environ.get("TAOFLOW_CHECK_DDP") == "1"
STEPS = 8 if FULL_CHECK else 2


def test_shipped_accelerate_configs_parse_with_accelerates_loader():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    options = {o for a in launch_command_parser()._actions for o in a.option_strings}
    expected = {
        "ddp_cpu": ("MULTI_GPU", True),  # MULTI_GPU + use_cpu: N gloo processes (see its note)
        "ddp_gpu": ("MULTI_GPU", False),
        "fsdp": ("FSDP", False),
        "deepspeed_zero3": ("DEEPSPEED", False),
    }
    assert {p.stem for p in ACCELERATE_DIR.glob("*.yaml")} == set(expected)
    for name, (kind, cpu) in expected.items():
        config = load_config_from_file(str(ACCELERATE_DIR / f"{name}.yaml"))  # unknown key: error
        assert (config.distributed_type.value, bool(config.use_cpu)) == (kind, cpu), name
        assert config.num_processes >= 2
        # sub-blocks become `accelerate launch` flags: a misspelt one would fail at launch time
        for block in ("fsdp_config", "deepspeed_config"):
            for key in getattr(config, block) or {}:
                assert f"--{key}" in options, f"{name}: {block}.{key} is no launch option"
    assert load_config_from_file(str(ACCELERATE_DIR / "deepspeed_zero3.yaml")).deepspeed_config[
        "zero_stage"
    ] == (3)


def test_launch_block_defaults_to_in_process_and_rejects_typos():
    base = yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_launch.yml").read_text())
    launch = validate_block("launch", base["launch"])
    assert launch == LaunchParams() and not launch.distributed
    with pytest.raises(ParameterError, match="did you mean 'num_processes'"):
        validate_block("launch", {"num_process": 2})
    with pytest.raises(ParameterError, match="launch.mode"):
        validate_block("launch", {"mode": "torchrun"})


def test_accelerate_command_runs_the_child_module_from_this_interpreter(tmp_path):
    launch = LaunchParams(
        mode="accelerate", config_file=DDP_CPU, num_processes=3, extra_args=["--quiet"]
    )
    command = accelerate_command(launch, tmp_path / "spec.json")
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert command[command.index("--config_file") + 1] == DDP_CPU
    assert command[command.index("--num_processes") + 1] == "3"
    assert int(command[command.index("--main_process_port") + 1]) > 0
    assert command[-4:] == ["--quiet", "-m", "taoflow.training.launch", str(tmp_path / "spec.json")]


def _ranks(tmp_path: Path, reports: list[dict]) -> Path:
    (tmp_path / RANKS_DIR).mkdir(parents=True)
    for report in reports:
        (tmp_path / RANKS_DIR / f"rank_{report['rank']}.json").write_text(json.dumps(report))
    return tmp_path


def test_a_single_process_or_diverged_ranks_are_refused(tmp_path):
    launch = LaunchParams(mode="accelerate", config_file=DDP_CPU)
    alone = _ranks(tmp_path / "a", [{"rank": 0, "world_size": 1, "weights_hash": "h"}])
    with pytest.raises(LaunchError, match=r"ranks \[0\] of world size\(s\) \[1\], not 2"):
        check_ranks(alone, 2, launch)
    apart = _ranks(
        tmp_path / "b",
        [
            {"rank": 0, "world_size": 2, "weights_hash": "h0"},
            {"rank": 1, "world_size": 2, "weights_hash": "h1"},
        ],
    )
    with pytest.raises(LaunchError, match="different weights"):
        check_ranks(apart, 2, launch)
    sharded = _ranks(
        tmp_path / "c",
        [
            {"rank": 0, "world_size": 2, "weights_hash": None},
            {"rank": 1, "world_size": 2, "weights_hash": None},
        ],
    )
    assert check_ranks(sharded, 2, launch)["weights_hash"] is None


def test_grpo_is_refused_before_anything_starts(tiny_policy, tmp_path):
    settings = TrainParams.model_validate(tiny_params(tmp_path, "grpo"))
    launch = LaunchParams(mode="accelerate", config_file=DDP_CPU, work_dir=str(tmp_path / "w"))
    with pytest.raises(LaunchError, match="grpo"):
        train_policy(
            tiny_policy, make_prompts(), settings, seed=0, round_=1, data_hashes={}, launch=launch
        )
    assert not (tmp_path / "w").exists()


def test_a_missing_config_file_is_one_clear_error(tmp_path):
    launch = LaunchParams(mode="accelerate", config_file=str(tmp_path / "nope.yaml"))
    with pytest.raises(LaunchError, match="is not a file"):
        run_job(launch, "taoflow.training.launch:policy_job", {}, tmp_path)


RANK_FAILURE_LOG = """\
[rank1]: Traceback (most recent call last):
[rank1]:   File "<frozen runpy>", line 198, in _run_module_as_main
[rank1]: FileNotFoundError: [Errno 2] Failed to open local file '/tmp/x.arrow'
[rank0]: Traceback (most recent call last):
[rank0]:   File "/x/taoflow/training/launch.py", line 333, in main
[rank0]: RuntimeError: Connection closed by peer [127.0.0.1]:32931
E1129 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: 1) local_rank: 0
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
"""


def test_failure_summary_names_the_ranks_exception_not_torchruns_report(tmp_path):
    log = tmp_path / "child.log"
    log.write_text(RANK_FAILURE_LOG)
    summary = failure_summary(log, 2)
    # the rank that crashed first, not the one that then lost its peer
    assert summary.startswith("FileNotFoundError: [Errno 2] Failed to open local file")
    assert summary.endswith(
        "in _run_module_as_main | [rank1]: FileNotFoundError: [Errno 2] Failed to open local "
        "file '/tmp/x.arrow'"
    )
    assert "ChildFailedError" not in summary and "\n" not in summary
    log.write_text("")
    assert failure_summary(log, 2).startswith("no exception in the log")


@pytest.mark.skipif(not FULL_CHECK, reason="make check-ddp (TAOFLOW_CHECK_DDP=1)")
def test_a_failing_child_gives_one_line_with_its_log_tail(tmp_path):
    launch = LaunchParams(mode="accelerate", config_file=DDP_CPU, log_tail_lines=5)
    with pytest.raises(LaunchError) as caught:
        run_job(launch, "taoflow.no_such_module:job", {}, tmp_path)
    message = str(caught.value)
    assert "\n" not in message
    assert "exited with" in message and "No module named 'taoflow.no_such_module'" in message


def _ddp_settings(tmp_path: Path, algorithm: str, **extra) -> TrainParams:
    params = tiny_params(tmp_path, algorithm, **extra)
    params["trainer"].update(max_steps=STEPS, per_device_train_batch_size=2)
    return TrainParams.model_validate(params)


DDP_CASES = [("rft", False)] + (
    [("dpo", False), ("dpo", True), ("kto", False)] if FULL_CHECK else []
)


@pytest.mark.parametrize(("algorithm", "lora"), DDP_CASES)
def test_two_process_ddp_training_on_cpu(algorithm, lora, tiny_model_dir, tmp_path):
    """A real 2-rank gloo DDP run: world size 2, identical weights, the in-process lineage."""
    settings = _ddp_settings(tmp_path / "ddp", algorithm, lora={"enabled": lora})
    scored = make_scored({f"p{i}": [1.0, 0.0, 1.0, 0.0] for i in range(4)})
    examples, _ = build_examples(scored, make_prompts(), settings, TASK)
    work = tmp_path / "work"
    launch = LaunchParams(mode="accelerate", config_file=DDP_CPU, work_dir=str(work))
    common = {"seed": 0, "round_": 1, "data_hashes": {"scored": frame_hash(scored)}}
    policy = load_policy(str(tiny_model_dir))
    before = weights_hash(policy.model)
    trained, metrics, curves = train_policy(policy, examples, settings, launch=launch, **common)

    reports = [json.loads(p.read_text()) for p in sorted((work / RANKS_DIR).glob("*.json"))]
    shown = [
        f"rank {r['rank']}/{r['world_size']} {r['backend']} {r['weights_hash'][:16]}"
        for r in reports
    ]
    print(f"ranks ({algorithm}{'+lora' if lora else ''}): {', '.join(shown)}")
    assert [(r["rank"], r["world_size"], r["backend"]) for r in reports] == [
        (0, 2, "gloo"),
        (1, 2, "gloo"),
    ]
    assert reports[0]["weights_hash"] == reports[1]["weights_hash"]  # DDP kept them in sync
    # the policy the parent got is what the ranks trained, not the input
    assert weights_hash(trained.model) == reports[0]["weights_hash"] != before
    assert weights_hash(policy.model) == before  # the parent's copy was not trained
    assert metrics["launch_world_size"] == 2 and metrics["global_step"] == STEPS
    assert [m["step"] for m in curves["train.round_1.loss"]] == list(range(1, STEPS + 1))
    assert (trained.adapter is not None) == lora

    # the same lineage as the single-process path, and it passes the same checks
    single_settings = _ddp_settings(tmp_path / "single", algorithm, lora={"enabled": lora})
    single, single_metrics, _ = train_policy(
        load_policy(str(tiny_model_dir)), examples, single_settings, **common
    )
    assert single.lineage == trained.lineage
    assert single_metrics["global_step"] == metrics["global_step"]
    assert all(trained.lineage.get(k) is not None for k in LINEAGE_FIELDS)
    assert trained.lineage["config_hash"] == settings.config_hash(0)
    next_round = make_scored({"p0": [1.0, 0.0]}, round_=2).assign(
        base_model=trained.lineage["base_model"], policy_name=trained.lineage["name"]
    )
    assert check_lineage(next_round, trained.lineage) == 2
    saved = tmp_path / "policy"
    PolicyDataset(path=str(saved)).save(trained)
    reloaded = PolicyDataset(path=str(saved)).load()
    assert {k: v for k, v in reloaded.lineage.items() if k != "name_or_path"} == trained.lineage
    assert weights_hash(reloaded.model) == weights_hash(trained.model)
    assert all(torch.isfinite(p).all() for p in reloaded.model.parameters())
    keys = ("launch_world_size", "global_step", "train_loss", "wall_time_s", "launch_wall_time_s")
    print(f"ddp {algorithm}: {', '.join(f'{k}={metrics[k]:.4g}' for k in keys)}")


@pytest.mark.skipif(not FULL_CHECK, reason="make check-ddp (TAOFLOW_CHECK_DDP=1)")
def test_sft_oracle_node_trains_under_ddp(tiny_model_dir, tmp_path):
    from taoflow.config.sft_oracle import SftOracleParams
    from taoflow.pipelines.sft_oracle.nodes import train_sft_oracle

    examples = pd.DataFrame(
        {
            "prompt_id": [f"p{i}" for i in range(4)],
            "prompt": [[{"role": "user", "content": f"What is {i} + 3?"}] for i in range(4)],
            "completion": [str(i + 3) for i in range(4)],
        }
    )
    train = TrainParams.model_validate(tiny_params(tmp_path, "dpo"))
    work = tmp_path / "work"
    launch = LaunchParams(mode="accelerate", config_file=DDP_CPU, work_dir=str(work))
    base = load_policy(str(tiny_model_dir))
    before = weights_hash(base.model)
    policy, metrics = train_sft_oracle(
        examples, base, SftOracleParams(), train, 0, reuse=None, launch=launch
    )
    assert policy.lineage["algorithm"] == "sft_oracle" and policy.lineage["labels"] == "gold"
    assert metrics["sft_oracle.launch_world_size"]["value"] == 2.0
    assert weights_hash(policy.model) != before
    reports = [json.loads(p.read_text()) for p in sorted((work / RANKS_DIR).glob("*.json"))]
    assert [r["world_size"] for r in reports] == [2, 2]
    assert len({r["weights_hash"] for r in reports}) == 1
    print(f"ddp sft_oracle: world size 2, lineage {policy.lineage['name']}")


@pytest.mark.skipif(not FULL_CHECK, reason="make check-ddp (TAOFLOW_CHECK_DDP=1)")
def test_reward_model_node_trains_under_ddp(tiny_encoder, tmp_path):  # noqa: F811
    from taoflow.pipelines.reward_model.nodes import (
        assemble_pairs,
        feedback_preference_pairs,
        scored_preference_pairs,
        train_reward_model,
    )
    from tests.test_reward_model import RM, scored_and_prompts

    params = RM({"base_model": str(tiny_encoder), "training": {"num_train_epochs": 2}})
    scored, prompts = scored_and_prompts()
    pairs = assemble_pairs(
        feedback_preference_pairs({}, params),
        params,
        scored_preference_pairs(scored, prompts, params),
    )
    work = tmp_path / "work"
    launch = LaunchParams(mode="accelerate", config_file=DDP_CPU, work_dir=str(work))
    model, metrics = train_reward_model(pairs, params, 0, launch=launch)
    assert metrics["reward_model.launch_world_size"]["value"] == 2.0
    reports = [json.loads(p.read_text()) for p in sorted((work / RANKS_DIR).glob("*.json"))]
    assert [r["world_size"] for r in reports] == [2, 2]
    assert weights_hash(model.model) == reports[0]["weights_hash"] == reports[1]["weights_hash"]
    assert 0.0 <= metrics["reward_model.train_accuracy"]["value"] <= 1.0
    keys = ("launch_world_size", "n_train", "train_loss", "train_accuracy", "train_seconds")
    values = {k: metrics[f"reward_model.{k}"]["value"] for k in keys}
    print(f"ddp reward_model: {', '.join(f'{k}={v:.4g}' for k, v in values.items())}")


@pytest.mark.skipif(not FULL_CHECK, reason="make check-ddp (TAOFLOW_CHECK_DDP=1)")
def test_train_pipeline_under_ddp_logs_once_from_the_parent(kedro_project, tiny_model_dir):
    """`kedro run --pipeline train` with launch.mode=accelerate: catalog + MLflow in the parent."""
    import mlflow
    from kedro.framework.session import KedroSession

    data = kedro_project / "data" / "05_model_input" / "handmade"
    data.mkdir(parents=True)
    scored = make_scored({f"p{i}": [1.0, 0.0, 1.0, 0.0] for i in range(4)})
    make_prompts().to_parquet(data / "prompts.parquet")
    scored.to_parquet(data / "scored.parquet")
    (kedro_project / "conf" / "local" / "catalog.yml").write_text(
        yaml.safe_dump(
            {
                "prompts": {
                    "type": "pandas.ParquetDataset",
                    "filepath": str(data / "prompts.parquet"),
                },
                "round_1.scored": {
                    "type": "pandas.ParquetDataset",
                    "filepath": str(data / "scored.parquet"),
                },
            }
        )
    )
    PolicyDataset(path=str(kedro_project / "data/06_models/base")).save(
        load_policy(str(tiny_model_dir))
    )
    runtime = {
        "model": {"name_or_path": "tiny-random"},
        "train": {
            "algorithm": "dpo",
            "trainer": {"per_device_train_batch_size": 2, "max_steps": 2, "max_length": 64},
        },
        "launch": {"mode": "accelerate"},  # conf/accelerate/ddp_cpu.yaml, relative to the project
    }
    with KedroSession.create(project_path=kedro_project, runtime_params=runtime) as session:
        session.run(pipeline_names=["train"])

    policy = load_policy(str(kedro_project / "data/06_models/round_1/policy"))
    assert policy.lineage["round"] == 1 and policy.lineage["algorithm"] == "dpo"
    assert policy.lineage["data_hashes"]["scored"] == frame_hash(scored)
    assert not (kedro_project / "data/06_models/checkpoints/round_1").exists()
    (run,) = mlflow.search_runs(experiment_names=["taoflow"], output_format="list")
    assert run.info.status == "FINISHED"
    client = mlflow.MlflowClient()
    history = client.get_metric_history(run.info.run_id, "train.launch_world_size")
    assert [(m.value, m.step) for m in history] == [(2.0, 1)]  # logged once, by the parent
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train.round_1.loss")]
    assert steps == [1, 2]
    keys = ("launch_world_size", "global_step", "train_loss", "launch_wall_time_s")
    values = ", ".join(f"train.{k}={run.data.metrics[f'train.{k}']:.4g}" for k in keys)
    print(f"ddp kedro train (MLflow run {run.info.run_name}): {values}, logged once")
