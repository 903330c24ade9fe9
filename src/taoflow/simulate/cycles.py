"""Cycles: serve the champion → a day of simulated usage → ``kedro run`` → serve the new champion.

Each cycle runs in the simulation's workspace (:mod:`taoflow.simulate.workspace`):

1. the registry's ``champion`` (the configured base model before there is one) is served by the
   same app ``taoflow serve`` runs, on 127.0.0.1 behind a bearer token, capturing traces;
2. yesterday's late feedback is posted, then the day's users send their prompts through the
   ``openai`` client and rate some answers (:mod:`taoflow.simulate.users`);
3. with the feedback reward model on, ``kedro run --pipeline ingest,reward_model`` ingests the new
   traces and feedback and trains the reward model from the feedback pairs;
4. ``kedro run`` (the composed ``tao`` pipeline) starts from the champion (``model.name_or_path``),
   scores with the configured scorers plus the reward model, trains, evaluates and promotes or
   refuses;
5. the cycle is logged as one MLflow run (experiment ``taoflow-simulate``) tagged with its number
   and the previous cycle's run id, with the counts and hashes of the data it consumed.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from taoflow.config.base import validate_block
from taoflow.config.reuse import ReuseParams
from taoflow.config.simulate import SimulateParams
from taoflow.core.ids import stable_hash
from taoflow.simulate import users
from taoflow.simulate.pool import Problem, assert_disjoint, build_pool
from taoflow.simulate.workspace import chdir, environ, prepare_workspace

logger = logging.getLogger(__name__)

EXPERIMENT = "taoflow-simulate"
CYCLE_TAG = "taoflow.cycle"
PREVIOUS_TAG = "taoflow.previous_cycle_run"
RM_SCORER = "feedback_rm"
RM_PATH = "data/06_models/reward_model"


@dataclass
class CycleResult:
    """What one cycle consumed and produced (the report reads these)."""

    cycle: int
    served: str
    run_id: str = ""
    counts: dict[str, float] = field(default_factory=dict)
    decision: dict[str, Any] = field(default_factory=dict)
    reward_model: dict[str, float] = field(default_factory=dict)
    per_prompt: pd.DataFrame | None = None


# Cached trainings per stage the shared cache keeps, per cycle: room for a simulation and its
# ablation, plus sweep values, to hit what an earlier one trained (each entry is a model copy).
SHARED_KEEP_PER_CYCLE = 4


def shared_reuse(
    raw: dict[str, Any], workspace: Path, kedro_params: dict[str, Any], keep_at_least: int = 1
) -> dict[str, Any]:
    """``kedro_params`` with a relative ``reuse.cache_dir`` moved beside the simulations.

    Every simulation's workspace is rebuilt, but trainings keyed by content (the sft_oracle
    yardstick, a round whose scored data an ablation leaves unchanged) are the same across them:
    one cache under ``<workspace>/reuse-cache`` trains each once. It keeps ``keep_at_least``
    entries per stage (or the project's ``reuse.keep``, if more): with the project's few, one
    simulation's later cycles would evict the entries the next simulation's first cycles hit.
    An absolute ``cache_dir`` (here or in ``kedro_params``) is kept as given.
    """
    reuse = raw.get("reuse") or {}
    cache_dir = Path(str(reuse.get("cache_dir", "data/06_models/cache")))
    if cache_dir.is_absolute():
        return dict(kedro_params)
    shared = (workspace / "reuse-cache" / cache_dir.name).resolve()
    keep = max(int(reuse.get("keep", ReuseParams().keep)), keep_at_least)
    return deep_merge(kedro_params, {"reuse": {"cache_dir": str(shared), "keep": keep}})


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``, nested mappings merged (lists replaced)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


class Simulation:
    """One simulation (``name``) of ``simulate.cycles`` cycles in ``<workspace>/<name>``."""

    def __init__(
        self,
        project: Path,
        params: SimulateParams,
        *,
        name: str = "default",
        env: str | None = None,
    ):
        from taoflow.serving.config import load_project_config

        self.project, self.params, self.name, self.env = Path(project).resolve(), params, name, env
        raw, self.credentials, _ = load_project_config(self.project, env)
        self.raw = deep_merge(raw, params.kedro_params)
        self.task = validate_block("task", self.raw.get("task"))
        self.model = validate_block("model", self.raw.get("model"))
        self.root = self.project / params.workspace / name
        self.overrides = shared_reuse(
            self.raw,
            self.project / params.workspace,
            params.kedro_params,
            keep_at_least=SHARED_KEEP_PER_CYCLE * params.cycles,
        )
        self.token = secrets.token_urlsafe(24)
        self.results: list[CycleResult] = []
        self.trace_ids: set[str] = set()  # every trace handed out so far: none may come back

    # -- set-up -------------------------------------------------------------------------------
    def held_questions(self) -> tuple[list[str], list[str]]:
        """Questions of the shipped usage (its gold file) and of the benchmark, via the catalog."""
        from kedro.framework.session import KedroSession

        with KedroSession.create(project_path=self.root, env=self.env) as session:
            catalog = session.load_context().catalog
            usage = catalog.load("usage_gold")["question"].astype(str).tolist()
            benchmark = catalog.load("benchmark")["question"].astype(str).tolist()
        return usage, benchmark

    def prepare(self) -> list[Problem]:
        self.root = prepare_workspace(
            self.project, self.root, self.model.name_or_path, self.model.cache_dir
        )
        with self._inside():
            usage, benchmark = self.held_questions()
        n = self.params.cycles * self.params.prompts_per_cycle
        pool = build_pool(self.params.pool, n, [*usage, *benchmark])
        assert_disjoint(pool, usage, benchmark)
        return pool

    def _inside(self) -> Any:
        from contextlib import ExitStack

        from kedro.framework.startup import bootstrap_project

        stack = ExitStack()
        stack.enter_context(chdir(self.root))
        stack.enter_context(
            environ(
                MLFLOW_TRACKING_URI=f"sqlite:///{self.root / 'mlflow.db'}",
                KEDRO_DISABLE_TELEMETRY="true",
            )
        )
        bootstrap_project(self.root)
        return stack

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> list[CycleResult]:
        """Every cycle in turn; returns their results (also logged to MLflow)."""
        pool = self.prepare()
        late: list[users.Outcome] = []
        import mlflow

        before = mlflow.get_tracking_uri()
        with self._inside():
            mlflow.set_tracking_uri(f"sqlite:///{self.root / 'mlflow.db'}")
            try:
                for cycle in range(1, self.params.cycles + 1):
                    started = time.perf_counter()
                    result, late = self.cycle(cycle, pool, late)
                    result.counts["cycle_seconds"] = time.perf_counter() - started
                    self.log_cycle(result)
                    self.results.append(result)
            finally:
                mlflow.set_tracking_uri(before)
        return self.results

    def cycle(
        self, cycle: int, pool: Sequence[Problem], late: list[users.Outcome]
    ) -> tuple[CycleResult, list[users.Outcome]]:
        plan = users.plan_day(pool, self.params, cycle)
        served, start_model, outcomes = self.serve_day(plan, late)
        self.check_new_traces(cycle, outcomes)
        result = CycleResult(cycle=cycle, served=served)
        result.counts.update(traffic_counts(plan, outcomes, late))
        result.counts["traffic_hash"] = int(users.plan_digest(plan)[:12], 16)
        overrides = deep_merge(self.overrides, {"ingest": {"traces": {"enabled": True}}})
        if start_model is not None:
            overrides = deep_merge(overrides, {"model": {"name_or_path": start_model}})
        runs = []
        scorers = list((self.raw.get("score") or {}).get("scorers") or [])
        if self.params.feedback_reward_model:
            rm_run, result.reward_model = self.train_reward_model(overrides)
            runs.append(rm_run)
            if (self.root / RM_PATH / "config.json").is_file():
                scorers.append(
                    {
                        "name": RM_SCORER,
                        "type": "reward_model",
                        "weight": self.params.reward_model_weight,
                        "model": RM_PATH,
                    }
                )
        runs.append(self.kedro(None, deep_merge(overrides, {"score": {"scorers": scorers}})))
        result.counts["scorers"] = len(scorers)
        result.decision = read_json(self.root / "data/08_reporting/promotion_decision.json")
        result.per_prompt = pd.read_parquet(self.root / "data/08_reporting/eval_per_prompt.parquet")
        result.counts.update(self.consumed())
        result.decision["kedro_runs"] = runs
        self.keep(cycle, outcomes)
        return result, users.late_outcomes(outcomes)

    def check_new_traces(self, cycle: int, outcomes: Sequence[users.Outcome]) -> None:
        """Refuse a day whose trace ids repeat: a repeated id overwrites the old trace in the
        store and the day's feedback lands on another answer, so the cycle would learn from
        mismatched thumbs without a sign of it."""
        ids = [o.trace_id for o in outcomes if o.trace_id]
        repeated = len(ids) - len(set(ids)) + len(self.trace_ids.intersection(ids))
        if repeated:
            raise RuntimeError(
                f"simulate: cycle {cycle} got {repeated} trace id(s) already handed out; "
                "traces would overwrite each other (is MLFLOW_TRACE_USE_ISOLATED_RANDOM_ID_GENERATOR "
                "false?)"
            )
        self.trace_ids.update(ids)

    # -- serving ------------------------------------------------------------------------------
    def serve_day(
        self, plan: list[users.Request], late: list[users.Outcome]
    ) -> tuple[str, str | None, list[users.Outcome]]:
        """Serve the champion (or the base), post late feedback, send the day's traffic."""
        import openai

        from taoflow.serving import TraceRecorder, build_config, create_app, load_served_policy
        from taoflow.serving.server import BackgroundServer

        serve = dict(self.raw.get("serve") or {})
        serve.update(host="127.0.0.1", port=0)
        serve["max_tokens_cap"] = max(int(serve.get("max_tokens_cap", 256)), self.params.max_tokens)
        config = build_config(serve)
        champion = has_champion(config.registered_model)
        ref = "champion" if champion else self.model.name_or_path
        policy, version = load_served_policy(ref, config.registered_model, config.cache_dir)
        start_model = served_folder(config.cache_dir, policy) if champion else None
        recorder = TraceRecorder(config.capture.experiment, version, lineage=policy.lineage)
        app = create_app(policy, config, model_version=version, token=self.token, recorder=recorder)
        with BackgroundServer(app, host=config.host, port=0) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key=self.token, max_retries=2)
            for outcome in late:
                users.post_feedback(client, outcome)
            outcomes = users.send_day(client, plan, self.params, self.task, version)
        del policy, app
        return version, start_model, outcomes

    # -- kedro --------------------------------------------------------------------------------
    def kedro(self, pipelines: list[str] | None, extra: dict[str, Any]) -> str:
        """One ``kedro run`` in this process; returns its MLflow run id."""
        import mlflow
        from kedro.framework.session import KedroSession

        with KedroSession.create(project_path=self.root, env=self.env, runtime_params=extra) as s:
            s.run(pipeline_names=pipelines)
        latest = mlflow.search_runs(
            search_all_experiments=True, order_by=["attributes.start_time DESC"], max_results=1
        )  # the run kedro-mlflow just closed: the store's newest
        return str(latest["run_id"].iloc[0]) if len(latest) else ""

    def train_reward_model(self, overrides: dict[str, Any]) -> tuple[str, dict[str, float]]:
        """Ingest the day's traces and feedback; train the reward model on feedback pairs only.

        Too few pairs (``reward_model.min_pairs``, or none left in the train split) is not a
        failure of the cycle: the previous reward model (if any) keeps scoring, and the cycle
        records that none was trained.
        """
        import mlflow

        extra = deep_merge(overrides, {"reward_model": {"pairs": {"from_scored": False}}})
        try:
            run_id = self.kedro(["ingest", "reward_model"], extra)
        except Exception:
            pairs = self.root / "data/05_model_input/reward_model/pairs.parquet"
            rm = validate_block("reward_model", self.raw.get("reward_model"))
            frame = pd.read_parquet(pairs) if pairs.is_file() else None
            if frame is None or len(frame) >= rm.min_pairs and (frame["split"] == "train").any():
                raise
            logger.warning("cycle: too few feedback pairs to train the reward model yet")
            return "", {"trained": 0.0, "n_pairs_feedback": float(len(frame))}
        metrics = mlflow.get_run(run_id).data.metrics if run_id else {}
        out = {k.split(".", 1)[1]: v for k, v in metrics.items() if k.startswith("reward_model.")}
        return run_id, {**out, "trained": 1.0}

    def consumed(self) -> dict[str, float]:
        """Counts and hashes of what the cycle's run read: prompts, served requests, pairs."""
        prompts = pd.read_parquet(self.root / "data/03_primary/prompts.parquet")
        out: dict[str, float] = {
            "prompts_ingested": len(prompts),
            "prompts_from_traces": int((prompts["source"] == "mlflow_traces").sum()),
            "prompts_hash": int(stable_hash(sorted(prompts["prompt_id"]))[:12], 16),
        }
        requests = sorted((self.root / "data/02_intermediate/ingest_trace_requests").glob("*"))
        # a trace re-read for its late feedback is appended again: count distinct traces
        ids = {t for f in requests for t in pd.read_parquet(f, columns=["trace_id"])["trace_id"]}
        out["trace_requests_ingested"] = len(ids)
        pairs = self.root / "data/05_model_input/reward_model/pairs.parquet"
        if pairs.is_file() and self.params.feedback_reward_model:
            frame = pd.read_parquet(pairs)
            out["feedback_pairs"] = int((frame["source"] == "feedback").sum())
            out["feedback_pairs_eval"] = int((frame["split"] == "eval").sum())
            out["pairs_hash"] = int(stable_hash(sorted(frame["pair_id"]))[:12], 16)
        return out

    def keep(self, cycle: int, outcomes: list[users.Outcome]) -> None:
        """Copy the cycle's reports (the next cycle overwrites them) and its traffic."""
        target = self.root / "cycles" / f"cycle_{cycle}"
        target.mkdir(parents=True, exist_ok=True)
        for name in ("eval_per_prompt.parquet", "promotion_decision.json", "eval_report.md"):
            source = self.root / "data/08_reporting" / name
            if source.is_file():
                shutil.copy(source, target / name)
        traffic = pd.DataFrame([outcome_row(o) for o in outcomes])
        traffic.to_parquet(target / "traffic.parquet")

    # -- MLflow -------------------------------------------------------------------------------
    def log_cycle(self, result: CycleResult) -> None:
        """One MLflow run per cycle, linked to the previous cycle's run by tag."""
        import mlflow

        previous = self.results[-1].run_id if self.results else ""
        mlflow.set_experiment(EXPERIMENT)
        with mlflow.start_run(run_name=f"{self.name}-cycle-{result.cycle}") as run:
            mlflow.set_tags(
                {
                    CYCLE_TAG: str(result.cycle),
                    PREVIOUS_TAG: previous,
                    "taoflow.simulation": self.name,
                    "taoflow.served_model": result.served,
                    "taoflow.kedro_runs": ",".join(result.decision.get("kedro_runs", [])),
                    "taoflow.gate.decision": str(result.decision.get("decision", "")),
                }
            )
            mlflow.log_params({"simulate": json.dumps(self.params.model_dump(), sort_keys=True)})
            metrics = {**result.counts}
            metrics.update({f"reward_model.{k}": v for k, v in result.reward_model.items()})
            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None})
            folder = self.root / "cycles" / f"cycle_{result.cycle}"
            mlflow.log_artifacts(str(folder), artifact_path="cycle")
            result.run_id = run.info.run_id


def traffic_counts(
    plan: Sequence[users.Request], outcomes: Sequence[users.Outcome], late: Sequence[users.Outcome]
) -> dict[str, float]:
    """Prompts, requests and feedback events of a day (late ones of yesterday included)."""
    rated = [o for o in outcomes if o.thumbs is not None and o.trace_id]
    on_time = [o for o in rated if not o.request.late]
    return {
        "prompts_sent": len({r.problem.key for r in plan}),
        "requests": len(outcomes),
        "traced": sum(1 for o in outcomes if o.trace_id),
        "served_accuracy": sum(o.correct for o in outcomes) / max(len(outcomes), 1),
        "feedback_events": len(on_time) + len(late),
        "feedback_late_from_previous": len(late),
        "feedback_held_for_next_day": len(rated) - len(on_time),
        "feedback_up": sum(1 for o in on_time if o.thumbs == "up"),
        "feedback_down": sum(1 for o in on_time if o.thumbs == "down"),
        "feedback_comments": sum(1 for o in on_time if o.comment),
        "feedback_wrong": sum(1 for o in on_time if (o.thumbs == "up") != o.correct),
    }


def outcome_row(outcome: users.Outcome) -> dict[str, Any]:
    r = outcome.request
    return {
        "cycle": r.cycle,
        "problem": r.problem.key,
        "question": r.problem.question,
        "sample": r.sample,
        "seed": r.seed,
        "user": r.user,
        "trace_id": outcome.trace_id,
        "answer": outcome.answer,
        "correct": outcome.correct,
        "thumbs": outcome.thumbs,
        "comment": outcome.comment,
        "late": r.late,
    }


def has_champion(name: str) -> bool:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient().get_model_version_by_alias(name, "champion")
    except MlflowException:
        return False
    return True


def served_folder(cache_dir: str, policy: Any) -> str:
    """The served champion as a plain Hugging Face folder (weights, tokenizer, lineage).

    The registry keeps an MLflow ``transformers`` model (tokenizer under ``components/``); the
    next round's ``model.name_or_path`` needs one ``from_pretrained`` folder, written once per
    version.
    """
    from taoflow.models import save_policy

    lineage = policy.lineage
    name = f"{lineage['registered_name']}-v{lineage['registered_version']}"
    target = Path(cache_dir) / "simulate" / name
    if not (target / "config.json").is_file():
        save_policy(policy, target)
    return str(target)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}
