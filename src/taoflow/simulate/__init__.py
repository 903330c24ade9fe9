"""The continuous-improvement simulator: served usage and feedback feeding the next round.

Not part of any pipeline; ``benchmarks/simulate.py`` (``make simulate``) drives it. See
``docs/continuous-improvement.md``.
"""

from taoflow.simulate.cycles import CycleResult, Simulation
from taoflow.simulate.pool import Problem, assert_disjoint, build_pool
from taoflow.simulate.report import cycle_table, plot_cycles, summarise

__all__ = [
    "CycleResult",
    "Problem",
    "Simulation",
    "assert_disjoint",
    "build_pool",
    "cycle_table",
    "plot_cycles",
    "summarise",
]
