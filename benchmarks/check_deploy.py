"""`make check-deploy`: the Databricks bundle and the Airflow DAG of this project, built and checked.

Run with the `.venv-deploy` interpreter (kedro-databricks, databricks-bundles, kedro-airflow,
apache-airflow and taoflow installed; the Makefile target makes it). In a throwaway copy of
the project (pyproject + conf, no conf/local) it:

1. runs `kedro databricks bundle --env databricks -g pipeline` (a job per registered pipeline)
   and validates every generated job with `databricks.bundles.jobs.Job.from_dict` (a misspelt
   field at any depth is rejected: shown on one job), checks each task calls this package's
   `taoflow` console script with arguments that it routes to Kedro's `run` and that Kedro's own
   option parser accepts, and that the clusters, environment and wheel are what conf/databricks
   asks for;
2. runs `kedro databricks bundle -g node --pipeline tao` (one task per node: the generator stops
   on any dataset between nodes that is not declared, i.e. a MemoryDataset crossing tasks) and
   validates that job the same way, then runs the generated tasks of `build_prompts` and the
   nodes it depends on here, each one its own `taoflow <task parameters>` process (the env
   swapped for `smoke`, a local MLflow), sharing only TAOFLOW_WORKDIR: the datasets between
   them travel through files (`--no-run` skips this);
3. runs `kedro airflow create` and parses the DAG with Airflow's own `DagBag`: no import errors,
   one task per node, the same dependencies as the node-level Databricks job.

`kedro databricks init/deploy/run` call the Go Databricks CLI and a workspace; neither is here.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
ENV = "databricks"
# jobs conf/databricks/databricks.yml puts on the CPU cluster; every other one gets the GPU
CPU_JOBS = {"taoflow_ingest", "taoflow_audit", "taoflow_promote", "taoflow_prepare_base"}
MUST_BE_GPU = {"taoflow_generate", "taoflow_train", "taoflow_evaluate", "taoflow_tao", "taoflow"}
UC_NAME = re.compile(r"^\w+\.\w+\.\w+$")


class CheckFailed(AssertionError):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def project_copy(where: Path) -> Path:
    """pyproject + conf (the user's conf/local left out) + an empty src/: what Kedro's CLI needs;
    the package itself is installed in the venv."""
    project = where / "project"
    project.mkdir()
    shutil.copy(ROOT / "pyproject.toml", project)
    shutil.copytree(ROOT / "conf", project / "conf", ignore=shutil.ignore_patterns("local"))
    (project / "conf" / "local").mkdir()
    (project / "src").mkdir()
    return project


def kedro(project: Path, *args: str) -> float:
    """Run the venv's `kedro` CLI in ``project``; its output goes to a log beside it."""
    env = {**os.environ, "DO_NOT_TRACK": "1", "KEDRO_DISABLE_TELEMETRY": "true"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlflow.db'}"
    log = project / f"kedro-{'-'.join(a.strip('-') for a in args[:3])}.log"
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run(
            [str(Path(sys.executable).parent / "kedro"), *args],
            cwd=project,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        ).returncode
    check(code == 0, f"`kedro {' '.join(args)}` exited {code}; see {log}")
    return time.perf_counter() - start


def load_jobs(project: Path) -> dict[str, dict[str, Any]]:
    jobs = {}
    for path in sorted((project / "resources").glob(f"target.{ENV}.jobs.*.yml")):
        doc = yaml.safe_load(path.read_text())
        jobs.update(doc["targets"][ENV]["resources"]["jobs"])
    return jobs


def validate_job(name: str, job: dict[str, Any]) -> Any:
    from databricks.bundles.jobs import Job

    model = Job.from_dict(copy.deepcopy(job))
    check(model.as_dict() == job, f"{name}: Job.from_dict(...).as_dict() differs from the YAML")
    return model


def misspelt_fields_rejected(job: dict[str, Any]) -> list[str]:
    """One misspelling per level (job, cluster spec, wheel task): each must be refused."""
    from databricks.bundles.jobs import Job

    cases = [
        ((), "tasks", "taks"),
        (("job_clusters", 0, "new_cluster"), "node_type_id", "node_typ_id"),
        (("tasks", 0, "python_wheel_task"), "entry_point", "entrypoint"),
    ]
    errors = []
    for path, right, wrong in cases:
        bad = copy.deepcopy(job)
        where = bad
        for key in path:
            where = where[key]
        where[wrong] = where.pop(right)
        try:
            Job.from_dict(bad)
        except (ValueError, TypeError) as err:
            errors.append(str(err))
        else:
            raise CheckFailed(f"Job.from_dict accepted the misspelt field {wrong!r}")
    return errors


def route(parameters: list[str], conf_dir: Path) -> dict[str, Any]:
    """A task's parameters as the bundle resolves them, through taoflow's entry point routing
    and Kedro's own `run` option parser (nothing runs): the values Kedro's run would get."""
    from taoflow import cli

    resolved = [
        p.replace("/${workspace.file_path}/conf", f"/{conf_dir}").replace("${var.environment}", ENV)
        for p in parameters
    ]
    check(cli.is_kedro_run(resolved), f"{parameters} does not route to the Kedro run")
    command = cli._guarded_run()
    context = command.make_context("taoflow run", list(resolved))
    return context.params


def entry_point_target(name: str) -> str:
    scripts = importlib.metadata.distribution("taoflow").entry_points.select(
        group="console_scripts"
    )
    matches = [ep.value for ep in scripts if ep.name == name]
    check(bool(matches), f"taoflow has no console script {name!r}")
    return matches[0]


def check_task(job_name: str, job: Any, task: Any, raw: dict, conf_dir: Path) -> dict[str, Any]:
    """``task`` (validated) and ``raw`` (its YAML, bundle variables still unresolved)."""
    wheel = task.python_wheel_task
    check(wheel is not None, f"{job_name}/{task.task_key}: not a python_wheel_task")
    check(wheel.package_name == "taoflow", f"{job_name}: package {wheel.package_name}")
    check(
        entry_point_target(wheel.entry_point) == "taoflow.cli:main",
        f"{job_name}: entry point {wheel.entry_point} is not taoflow.cli:main",
    )
    params = route(raw["python_wheel_task"]["parameters"], conf_dir)
    check(params["env"] == ENV and Path(params["conf_source"]) == conf_dir, f"{job_name}: {params}")
    check(
        any(str(lib.whl).endswith(".whl") for lib in task.libraries or []),
        f"{job_name}/{task.task_key}: no wheel library",
    )
    clusters = {c.job_cluster_key: c.new_cluster for c in job.job_clusters}
    check(task.job_cluster_key in clusters, f"{job_name}/{task.task_key}: no job cluster")
    spec = clusters[task.job_cluster_key]
    env_vars = spec.spark_env_vars
    check(
        env_vars.get("MLFLOW_TRACKING_URI") == "databricks", f"{job_name}: MLflow not on Databricks"
    )
    check(
        str(env_vars.get("TAOFLOW_WORKDIR", "")).startswith("/Volumes/"),
        f"{job_name}: TAOFLOW_WORKDIR is not on a Unity Catalog volume",
    )
    return {"cluster": task.job_cluster_key, "node_type": spec.node_type_id, **params}


def check_pipeline_bundle(project: Path) -> list[str]:
    seconds = kedro(project, "databricks", "bundle", "--env", ENV, "-g", "pipeline", "--overwrite")
    jobs = load_jobs(project)
    conf_dir = project / "conf"
    lines = [f"bundle -g pipeline: {len(jobs)} jobs written to resources/ in {seconds:.0f} s"]
    for name, job in sorted(jobs.items()):
        model = validate_job(name, job)
        check(len(model.tasks) == 1, f"{name}: {len(model.tasks)} tasks, expected 1")
        routed = check_task(name, model, model.tasks[0], job["tasks"][0], conf_dir)
        want = "cpu" if name in CPU_JOBS else "gpu"
        check(routed["cluster"] == want, f"{name}: on {routed['cluster']}, expected {want}")
        pipeline = name.removeprefix("taoflow_") if name != "taoflow" else "__default__"
        check(routed["pipeline"] == pipeline, f"{name}: runs --pipeline {routed['pipeline']}")
        lines.append(
            f"  {name:<22} Job.from_dict ok  cluster {routed['cluster']} ({routed['node_type']})"
            f"  taoflow --pipeline {routed['pipeline']} --env {routed['env']}"
        )
    check(set(jobs) >= MUST_BE_GPU, f"missing jobs: {sorted(MUST_BE_GPU - set(jobs))}")
    errors = misspelt_fields_rejected(jobs["taoflow_train"])
    lines.append("  misspelt fields rejected: " + "; ".join(errors))
    return lines


def check_node_bundle(project: Path) -> tuple[list[str], dict[str, set[str]], dict]:
    shutil.rmtree(project / "resources", ignore_errors=True)
    seconds = kedro(
        project, "databricks", "bundle", "--env", ENV, "-g", "node", "--pipeline", "tao"
    )
    jobs = load_jobs(project)
    check(list(jobs) == ["taoflow_tao"], f"node bundle wrote {list(jobs)}")
    model = validate_job("taoflow_tao", jobs["taoflow_tao"])
    conf_dir = project / "conf"
    deps = {}
    for task, raw in zip(model.tasks, jobs["taoflow_tao"]["tasks"], strict=True):
        routed = check_task("taoflow_tao", model, task, raw, conf_dir)
        check(len(routed["node_names"]) == 1, f"{task.task_key}: {routed['node_names']}")
        deps[slug(routed["node_names"][0])] = {slug(d.task_key) for d in task.depends_on or []}
    edges = sum(len(v) for v in deps.values())
    lines = [
        f"bundle -g node --pipeline tao: 1 job, {len(model.tasks)} tasks (one per node), "
        f"{edges} dependencies, in {seconds:.0f} s; Job.from_dict ok; the generator found no "
        "undeclared (MemoryDataset) dataset between nodes; every task: taoflow --nodes <node>"
    ]
    return lines, deps, jobs["taoflow_tao"]


def upstream_closure(tasks: dict[str, dict], key: str) -> list[str]:
    """``key`` and every task it depends on, dependencies first."""
    order: list[str] = []

    def visit(k: str) -> None:
        for dep in tasks[k].get("depends_on", []):
            visit(dep["task_key"])
        if k not in order:
            order.append(k)

    visit(key)
    return order


def run_node_tasks(project: Path, job: dict, last: str = "build_prompts") -> list[str]:
    """The node job's tasks up to ``last``, each in its own process and working folder."""
    tasks = {t["task_key"]: t for t in job["tasks"]}
    workdir = project.parent / "volume"  # outside the project, as a Unity Catalog volume is
    shutil.copytree(ROOT / "data" / "01_raw", workdir / "data" / "01_raw")
    env = {
        **os.environ,
        "TAOFLOW_WORKDIR": str(workdir),
        "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'tasks-mlflow.db'}",
        "HF_HUB_OFFLINE": "1",
        "DO_NOT_TRACK": "1",
    }
    script = str(Path(sys.executable).parent / "taoflow")
    timings = []
    for key in upstream_closure(tasks, last):
        params = [
            str(p)
            .replace("/${workspace.file_path}/conf", f"/{project / 'conf'}")
            .replace("${var.environment}", "smoke")
            for p in tasks[key]["python_wheel_task"]["parameters"]
        ]
        driver = project / "drivers" / key  # a task's own working folder, as on a cluster
        driver.mkdir(parents=True)
        start = time.perf_counter()
        done = subprocess.run(
            [script, *params], cwd=driver, env=env, capture_output=True, text=True, check=False
        )
        check(done.returncode == 0, f"task {key}: exit {done.returncode}\n{done.stderr[-2000:]}")
        check(not (driver / "data").exists(), f"task {key} wrote data/ outside TAOFLOW_WORKDIR")
        timings.append(f"{key} {time.perf_counter() - start:.0f} s")
    prompts = workdir / "data" / "03_primary" / "prompts.parquet"
    check(prompts.is_file(), f"{prompts} was not written")
    return [
        f"  ran {len(timings)} generated tasks as separate `taoflow --nodes ...` processes "
        f"(--env smoke): {', '.join(timings)}; {prompts.relative_to(project.parent)} written"
    ]


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower())


def check_airflow(project: Path, node_deps: dict[str, set[str]]) -> list[str]:
    dags = project / "airflow_dags"
    dags.mkdir()
    seconds = kedro(project, "airflow", "create", "--target-dir", str(dags))
    os.environ["AIRFLOW_HOME"] = str(project / "airflow_home")
    import airflow
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(dags))
    check(not bag.import_errors, f"DagBag import errors: {bag.import_errors}")
    check(list(bag.dags) == ["taoflow"], f"DAGs: {list(bag.dags)}")
    dag = bag.dags["taoflow"]
    tasks = {t.task_id: set(t.upstream_task_ids) for t in dag.tasks}
    check(
        {slug(k): {slug(u) for u in v} for k, v in tasks.items()} == node_deps,
        "the DAG's tasks/dependencies differ from the pipeline's nodes",
    )
    return [
        f"kedro airflow create: {', '.join(p.name for p in dags.glob('*.py'))} in {seconds:.0f} s;"
        f" Airflow {airflow.__version__} DagBag: 0 import errors, DAG 'taoflow' with "
        f"{len(tasks)} tasks, dependencies equal to the node-level job's"
    ]


def check_uc_names(project: Path) -> str:
    from taoflow.settings import CONFIG_LOADER_ARGS, CONFIG_LOADER_CLASS

    loader = CONFIG_LOADER_CLASS(conf_source=str(project / "conf"), env=ENV, **CONFIG_LOADER_ARGS)
    params = loader["parameters"]
    names = [params["promote"]["registered_model_name"], params["serve"]["registered_model"]]
    check(all(UC_NAME.match(n) for n in names), f"not catalog.schema.model: {names}")
    check(len(set(names)) == 1, f"promote and serve name different models: {names}")
    return f"--env {ENV}: promote registers and serve loads {names[0]} (Unity Catalog name)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the project copy (prints it)")
    parser.add_argument("--no-run", action="store_true", help="do not run the node tasks here")
    args = parser.parse_args()
    where = Path(tempfile.mkdtemp(prefix="taoflow-deploy-"))
    project = project_copy(where)
    versions = {
        p: importlib.metadata.version(p)
        for p in ("kedro", "kedro-databricks", "databricks-bundles", "kedro-airflow")
    }
    versions["apache-airflow"] = importlib.metadata.version("apache-airflow")
    report = ["check-deploy: " + ", ".join(f"{k} {v}" for k, v in versions.items())]
    try:
        report += check_pipeline_bundle(project)
        node_lines, node_deps, node_job = check_node_bundle(project)
        report += node_lines
        if not args.no_run:
            report += run_node_tasks(project, node_job)
        report += check_airflow(project, node_deps)
        report.append(check_uc_names(project))
    except CheckFailed as err:
        print("\n".join(report))
        print(f"FAILED: {err}")
        print(f"project copy kept: {project}")
        return 1
    report.append(
        "not run: `kedro databricks init/deploy/run` (they call the Go Databricks CLI and a "
        "workspace, neither of which is on this machine)"
    )
    print("\n".join(report))
    if args.keep:
        print(f"project copy: {project}")
    else:
        shutil.rmtree(where)
    print("check-deploy: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
