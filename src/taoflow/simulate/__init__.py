"""The continuous-improvement simulator: served usage and feedback feeding the next round.

Not part of any pipeline; ``benchmarks/simulate.py`` (``make simulate``) drives it. See
``docs/continuous-improvement.md``.
"""

from taoflow.simulate.cycles import CycleResult, Simulation
from taoflow.simulate.pool import Problem, assert_disjoint, build_pool
from taoflow.simulate.report import (
    cycle_table,
    final_champion,
    load_results,
    plot_cycles,
    summarise,
    versus,
)

__all__ = [
    "load_results",
    "SMOKE",
    "CycleResult",
    "Problem",
    "Simulation",
    "assert_disjoint",
    "build_pool",
    "cycle_table",
    "final_champion",
    "plot_cycles",
    "summarise",
    "versus",
]

# Two short cycles on the tiny model (`--env smoke`): what `make simulate-smoke` and the test run.
# A random model is never right, so noise makes the thumbs-ups feedback pairs need.
SMOKE: dict = {
    "cycles": 2,
    "prompts_per_cycle": 4,
    "samples_per_prompt": 4,
    "batch_size": 8,
    "max_tokens": 8,
    "feedback": {"coverage": 1.0, "noise": 0.5, "comment_share": 0.5, "late_share": 0.25},
    "kedro_params": {
        "tao": {"rounds": 1, "sft_oracle": False, "audit_rewards": False},
        "reward_model": {
            "min_pairs": 2,
            "pairs": {"eval_fraction": 0.5},
            "training": {"num_train_epochs": 1, "progress": False},
        },
    },
}
