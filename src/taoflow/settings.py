"""Project settings: hooks, config loader and session store.

https://docs.kedro.org/en/stable/kedro_project_setup/settings.html
"""

import warnings

# Library deprecation notices printed on every command, none the user's to act on.
warnings.filterwarnings("ignore", message=r"register_new_resolver\(\) is deprecated")
warnings.filterwarnings("ignore", message=r"(?s).*Add type hints to the `predict` method")

from omegaconf.resolvers import oc  # noqa: E402

from taoflow.config.loader import LayeredConfigLoader  # noqa: E402
from taoflow.context import TaoflowContext  # noqa: E402
from taoflow.hooks import ReproducibilityHook, RunLockHook, StageTimingHook, TrackingHook  # noqa: E402
from taoflow.memory import MemoryReleaseHook  # noqa: E402
from taoflow.mlflow_run import RunInputsHook  # noqa: E402

# kedro-mlflow's hook runs as TrackingHook (same hook, typed parameters logged as plain values).
# RunLockHook: one run at a time per project directory. RunInputsHook: prompts, benchmarks and
# candidates as MLflow run inputs, evaluation tables as MLflow tables.
HOOKS = (
    TrackingHook(),
    ReproducibilityHook(),
    RunInputsHook(),
    StageTimingHook(),
    RunLockHook(),
    MemoryReleaseHook(),
)
DISABLE_HOOKS_FOR_PLUGINS = ("kedro-mlflow", "kedro_mlflow")

# Validates every parameter block and builds the graph from this env (taoflow.config.graph).
CONTEXT_CLASS = TaoflowContext

# base → local (your settings: data, model, judge, credentials) → the experiment env (--env X);
# a key your conf/local and the experiment set differently stops the run (taoflow.config.loader).
CONFIG_LOADER_CLASS = LayeredConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # `oc.env` is credentials-only by default; mlflow.yml needs it for MLFLOW_TRACKING_URI.
    "custom_resolvers": {"oc.env": oc.env},
    # An experiment environment overrides single knobs (`generate.num_candidates`), not whole
    # stage blocks: merge parameters key by key instead of replacing top-level keys.
    "merge_strategy": {"parameters": "soft"},
    "config_patterns": {
        "parameters": ["parameters*", "parameters*/**", "**/parameters*"],
        "mlflow": ["mlflow*", "mlflow*/**", "**/mlflow*"],
    },
}
