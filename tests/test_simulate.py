"""The continuous-improvement simulator: disjoint pool, seeded traffic, and two smoke cycles."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from taoflow.config.base import validate_block
from taoflow.config.shared import TaskParams
from taoflow.simulate import SMOKE, users
from taoflow.simulate.pool import Problem, assert_disjoint, build_pool, question_key

pytest.importorskip("reasoning_gym")


def _questions(path) -> list[str]:
    return pd.read_json(path, lines=True, dtype=False)["question"].astype(str).tolist()


def test_pool_shares_no_problem_with_usage_or_benchmark():
    from tests.conftest import PROJECT_ROOT

    usage = _questions(PROJECT_ROOT / "data/01_raw/usage_gold.jsonl")
    benchmark = _questions(PROJECT_ROOT / "data/01_raw/benchmark.jsonl")
    params = validate_block("simulate", {})
    pool = build_pool(params.pool, 200, [*usage, *benchmark])
    assert len(pool) == 200 == len({question_key(p.question) for p in pool})
    assert_disjoint(pool, usage, benchmark)
    # the check itself bites: a pool holding a benchmark question is refused
    leaked = [*pool[:3], Problem("x", benchmark[0].upper(), "0")]
    with pytest.raises(AssertionError, match="shares 1 problem"):
        assert_disjoint(leaked, usage, benchmark)


def test_same_config_same_traffic_plan_and_feedback():
    pool = [Problem(str(i), f"What is {i} + 1?", str(i + 1)) for i in range(20)]
    params = validate_block("simulate", {"prompts_per_cycle": 5, "seed": 3})
    first, again = users.plan_day(pool, params, 1), users.plan_day(pool, params, 1)
    assert first == again and users.plan_digest(first) == users.plan_digest(again)
    assert len(first) == 5 * params.samples_per_prompt
    assert {r.problem.key for r in first} == {str(i) for i in range(5)}
    assert {r.problem.key for r in users.plan_day(pool, params, 2)} == {
        str(i) for i in range(5, 10)
    }
    other = validate_block("simulate", {"prompts_per_cycle": 5, "seed": 4})
    assert users.plan_digest(users.plan_day(pool, other, 1)) != users.plan_digest(first)
    # coverage and noise: a rated, flipped request turns a right answer into a thumbs down
    task = TaskParams()
    rated = [r for r in first if r.rates]
    assert 0 < len(rated) < len(first)  # coverage 0.3 of 20
    for request in rated:
        right = f"The answer is {request.problem.answer}"
        correct, thumbs, _ = users.judge(request, right, task)
        assert correct and thumbs == ("down" if request.flips else "up")
    unrated = next(r for r in first if not r.rates)
    assert users.judge(unrated, "7", task)[1] is None


def test_same_config_same_traffic_through_the_server(tiny_policy):
    """Two days with the same plan against the served tiny model: identical answers and thumbs."""
    import openai

    from taoflow.serving import build_config, create_app
    from taoflow.serving.server import BackgroundServer

    pool = [Problem(str(i), f"1 + {i} =", str(i + 1)) for i in range(3)]
    params = validate_block(
        "simulate",
        {
            "prompts_per_cycle": 3,
            "samples_per_prompt": 2,
            "batch_size": 4,
            "max_tokens": 6,
            "feedback": {"coverage": 1.0},
        },
    )
    plan = users.plan_day(pool, params, 1)
    config = build_config({"max_tokens_cap": 8, "default_max_tokens": 8, "batch_window_ms": 0})
    app = create_app(tiny_policy, config, model_version="tiny", token="secret-token")
    days = []
    with BackgroundServer(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="secret-token", max_retries=0)
        for _ in range(2):
            outcomes = users.send_day(client, plan, params, TaskParams(), "tiny")
            days.append([(o.request.seed, o.answer, o.thumbs) for o in outcomes])
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
    assert days[0] == days[1] and len(days[0]) == 6
    assert all(thumbs in ("up", "down") for _, _, thumbs in days[0])


def test_two_smoke_cycles_feedback_trains_and_scores(kedro_project, tmp_path):
    """Serve → users + feedback → ingest + reward model → tao, twice, on the smoke env."""
    import mlflow

    from taoflow.simulate import Simulation, cycle_table, plot_cycles, summarise
    from taoflow.simulate.cycles import CYCLE_TAG, EXPERIMENT, PREVIOUS_TAG, RM_SCORER

    # a gate that promotes any non-worse candidate, so cycle 2 serves and trains from a champion
    kedro_params = {**SMOKE["kedro_params"], "promote": {"min_ci_low": -1.0}}
    params = validate_block(
        "simulate", {**SMOKE, "kedro_params": kedro_params, "workspace": str(tmp_path / "sim")}
    )
    sim = Simulation(kedro_project, params, name="smoke", env="smoke")
    results = sim.run()
    root = tmp_path / "sim" / "smoke"
    assert [r.cycle for r in results] == [1, 2]

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    # feedback arrived in MLflow: every thumb posted is an assessment on its trace
    traces = mlflow.search_traces(
        locations=[mlflow.get_experiment_by_name("taoflow-serve").experiment_id],
        return_type="list",
    )
    assert len(traces) == sum(r.counts["traced"] for r in results) == 32
    rated = [t for t in traces if any(a.name == "user_feedback" for a in t.info.assessments)]
    posted = sum(r.counts["feedback_events"] for r in results)
    assert len(rated) == posted > 0
    late = results[1].counts["feedback_late_from_previous"]
    assert late == results[0].counts["feedback_held_for_next_day"] > 0

    # the reward model was trained from feedback pairs, and scored the next round's candidates
    for result in results:
        assert result.reward_model["n_pairs_feedback"] == result.counts["feedback_pairs"]
        # every served request reached the run (smoke's ingest.max_prompts may sample prompts out)
        assert result.counts["trace_requests_ingested"] == 16 * result.cycle
    assert results[1].counts["feedback_pairs"] > results[0].counts["feedback_pairs"] > 0
    trained = results[1].reward_model
    assert trained["trained"] == 1.0 and trained["n_eval"] > 0
    assert 0.0 <= trained["eval_accuracy"] <= 1.0  # pair accuracy on held-out feedback
    scored = pd.read_parquet(root / "data/05_model_input/round_1/scored.parquet")
    assert scored[f"score_{RM_SCORER}"].notna().all() and scored[f"score_{RM_SCORER}"].std() > 0

    # one MLflow run per cycle, linked to the one before, with what it consumed
    runs = mlflow.search_runs(experiment_names=[EXPERIMENT], order_by=["attributes.start_time"])
    assert runs[f"tags.{CYCLE_TAG}"].tolist() == ["1", "2"]
    assert runs[f"tags.{PREVIOUS_TAG}"].tolist()[1] == runs["run_id"].iloc[0]
    assert runs["metrics.requests"].tolist() == [16.0, 16.0]
    tao_run = mlflow.get_run(runs["tags.taoflow.kedro_runs"].iloc[1].split(",")[-1])
    assert RM_SCORER in json.dumps(tao_run.data.params)

    # cycle 1 promoted; cycle 2 served that champion and trained the next round from it
    assert results[0].served == "tiny-random" and results[0].decision["promoted"]
    assert results[1].served == f"models:/taoflow-policy/{results[0].decision['version']}"
    start = mlflow.get_run(runs["tags.taoflow.kedro_runs"].iloc[1].split(",")[-1])
    assert start.data.params["model.name_or_path"] == "data/06_models/simulate/taoflow-policy-v1"
    assert results[1].decision["alias"] == "champion"

    summary = summarise(results)
    assert summary["cycle"].tolist() == [0, 1, 2]
    assert summary["gate"].iloc[1:].tolist() == ["champion", "champion"]
    table = cycle_table(summary)
    assert table.count("\n| ") == 4 and "[" in table
    plot_cycles({"smoke": summary}).savefig(tmp_path / "accuracy.png")
    assert (tmp_path / "accuracy.png").stat().st_size > 0
    # the champion after each cycle against cycle 1's round, paired
    assert summary["vs_first_round_diff"].iloc[1:].notna().all()

    # the report rebuilt from the workspace alone (simulate.py --report-only) is the same table
    from taoflow.simulate import load_results

    again = summarise(load_results(root, "smoke"))
    pd.testing.assert_frame_equal(again, summary, check_dtype=False)
    # a name with no finished cycle, or no workspace at all, is one clear error (never an empty table)
    with pytest.raises(ValueError, match="no finished cycle of simulation 'other'"):
        load_results(root, "other")
    with pytest.raises(ValueError, match="no simulation here"):
        load_results(tmp_path / "absent", "smoke")


def test_reward_model_stage_without_scored_pairs_needs_no_round():
    """``reward_model.pairs.from_scored: false`` drops the scored input from the stage's graph."""
    from taoflow.config.graph import _context_params
    from taoflow.pipelines.reward_model.pipeline import create_pipeline

    before = dict(_context_params)
    try:
        _context_params.clear()
        _context_params["reward_model"] = validate_block("reward_model", {})
        assert "round_1.scored" in create_pipeline().inputs()
        _context_params["reward_model"] = validate_block(
            "reward_model", {"pairs": {"from_scored": False}}
        )
        assert create_pipeline().inputs() == {
            "ingest_trace_requests",
            "params:launch",
            "params:reward_model",
            "params:seed",
        }
    finally:
        _context_params.clear()
        _context_params.update(before)


def test_workspace_never_replaces_a_folder_it_did_not_make(tmp_path):
    from taoflow.simulate.workspace import prepare_workspace
    from tests.conftest import PROJECT_ROOT

    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not made by the simulator"):
        prepare_workspace(PROJECT_ROOT, mine, "tiny-random", str(tmp_path / "cache"))
    assert (mine / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="holds the project"):
        prepare_workspace(PROJECT_ROOT, PROJECT_ROOT.parent, "tiny-random", str(tmp_path))


def test_reuse_cache_is_shared_beside_the_simulations(tmp_path):
    from taoflow.simulate.cycles import shared_reuse

    raw = {"reuse": {"cache_dir": "data/06_models/cache", "keep": 2}}
    got = shared_reuse(raw, tmp_path / "sim", {"tao": {"rounds": 1}}, keep_at_least=12)
    assert got == {
        "tao": {"rounds": 1},
        "reuse": {"cache_dir": str(tmp_path / "sim/reuse-cache/cache"), "keep": 12},
    }
    more = {"reuse": {"cache_dir": "data/06_models/cache", "keep": 20}}
    assert shared_reuse(more, tmp_path / "sim", {}, keep_at_least=12)["reuse"]["keep"] == 20
    absolute = {"reuse": {"cache_dir": str(tmp_path / "mine")}}
    assert shared_reuse(absolute, tmp_path / "sim", {}) == {}


def test_simulations_are_paired_on_their_last_champions():
    from taoflow.simulate import CycleResult, final_champion, versus

    def cycle(candidate: list[float], promoted: bool) -> CycleResult:
        rows = [
            {"model": model, "benchmark": "sums", "item_id": str(i), "accuracy": value}
            for model, values in (("base", [0.0, 0.0, 1.0, 0.0]), ("round_1", candidate))
            for i, value in enumerate(values)
        ]
        result = CycleResult(cycle=1, served="base")
        result.per_prompt = pd.DataFrame(rows)
        result.decision = {"metric": "sums/accuracy", "promoted": promoted, "version": 2}
        return result

    kept = final_champion([cycle([1.0, 1.0, 1.0, 1.0], promoted=False)])
    promoted = final_champion([cycle([1.0, 1.0, 1.0, 0.0], promoted=True)])
    assert kept.tolist() == [0.0, 0.0, 1.0, 0.0]  # refused: the served champion stays
    assert promoted.tolist() == [1.0, 1.0, 1.0, 0.0]
    got = versus(promoted, kept)
    assert got["diff"] == pytest.approx(0.5)
    assert got["ci_low"] <= got["diff"] <= got["ci_high"]


def test_a_repeated_trace_id_stops_the_cycle():
    """A trace id handed out twice would overwrite a trace and move its feedback onto another
    answer: the simulator refuses the day instead of learning from mismatched thumbs."""
    from types import SimpleNamespace

    from taoflow.simulate import Simulation

    sim = SimpleNamespace(trace_ids=set())
    day = [SimpleNamespace(trace_id=t) for t in ("tr-a", "tr-b", None)]
    Simulation.check_new_traces(sim, 1, day)
    assert sim.trace_ids == {"tr-a", "tr-b"}
    with pytest.raises(RuntimeError, match="cycle 2 got 1 trace id"):
        Simulation.check_new_traces(sim, 2, [SimpleNamespace(trace_id="tr-b")])
    with pytest.raises(RuntimeError, match="cycle 3 got 1 trace id"):
        Simulation.check_new_traces(sim, 3, [SimpleNamespace(trace_id="tr-c")] * 2)
