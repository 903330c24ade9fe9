"""Shared tracking, checked for real: the smoke pipeline against an MLflow server backed by PostgreSQL.

    python benchmarks/check_mlflow_server.py            # what `make check-mlflow-server` runs
    python benchmarks/check_mlflow_server.py --install  # apt-get install postgresql first if missing
    python benchmarks/check_mlflow_server.py --keep     # leave the temp folder (logs, artifacts)

Everything is private and thrown away afterwards (also when a step fails): a PostgreSQL cluster
initialised in a temp folder (as the `postgres` user when run as root, which initdb refuses),
listening on 127.0.0.1 at a free port with a password; an `mlflow server` on 127.0.0.1 using it
as backend store and a local folder as artifact root (served over HTTP: clients need no access
to it); a throwaway copy of the project that runs `kedro run --env smoke` with
``MLFLOW_TRACKING_URI`` pointing at the server. The URI carries a random password
(``http://taoflow:<token>@127.0.0.1:<port>``): the check also proves it is masked everywhere
taoflow logs (nothing in the database dump or the artifact root holds it).

Then, through ``MlflowClient`` on the server: the run, its params and metrics, the resolved
configuration artifact, the registered model version and its alias, traces if the run wrote any;
and, straight from PostgreSQL, that the rows are there.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PG_TOOLS = ("initdb", "pg_ctl", "createdb", "pg_dump")
EXTRA = "tracking-server"


def extra_requirements(extra: str = EXTRA) -> list[str]:
    """The pinned requirements of a pyproject extra (one home for the pin: pyproject.toml)."""
    text = (ROOT / "pyproject.toml").read_text()
    match = re.search(rf"^{re.escape(extra)}\s*=\s*\[(.*?)\]", text, re.M | re.S)
    if match is None:
        raise SystemExit(f"pyproject.toml has no extra {extra!r}")
    return re.findall(r'"([^"]+)"', match.group(1))


def find_pg_tools() -> dict[str, str] | None:
    """PostgreSQL's server programs: on PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    found = {tool: shutil.which(tool) for tool in PG_TOOLS}
    if all(found.values()):
        return {k: str(v) for k, v in found.items()}
    for bindir in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if all((bindir / tool).is_file() for tool in PG_TOOLS):
            return {tool: str(bindir / tool) for tool in PG_TOOLS}
    return None


def ensure_postgres(install: bool) -> dict[str, str]:
    tools = find_pg_tools()
    if tools is None and install and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], check=True, env=env)
        tools = find_pg_tools()
    if tools is None:
        raise SystemExit(
            "PostgreSQL server programs (initdb, pg_ctl) not found: install the Debian package "
            "`postgresql` (as root: apt-get install -y postgresql) and run again."
        )
    return tools


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_db_owner(cmd: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the `postgres` user then."""
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


@contextlib.contextmanager
def postgres_cluster(tools: dict[str, str], workdir: Path, password: str) -> Iterator[str]:
    """A private PostgreSQL cluster on 127.0.0.1; yields the SQLAlchemy URI of a fresh database."""
    home = workdir / "pg"
    home.mkdir()
    (home / "pwfile").write_text(password + "\n")
    if os.geteuid() == 0:
        shutil.chown(workdir, "postgres")  # the folder must be reachable, the cluster its own
        shutil.chown(home, "postgres")
        shutil.chown(home / "pwfile", "postgres")
    port = free_port()
    data = home / "data"
    subprocess.run(
        _as_db_owner(
            [tools["initdb"], "-D", str(data), "-U", "taoflow", "-E", "UTF8",
             "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={home / 'pwfile'}"]
        ),
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={home}"
    ctl = [tools["pg_ctl"], "-D", str(data)]
    subprocess.run(
        _as_db_owner([*ctl, "-o", options, "-l", str(home / "server.log"), "-w", "start"]),
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        env = {**os.environ, "PGPASSWORD": password}
        subprocess.run(
            [tools["createdb"], "-h", "127.0.0.1", "-p", str(port), "-U", "taoflow", "mlflow"],
            check=True, env=env,
        )  # fmt: skip
        yield f"postgresql+psycopg2://taoflow:{password}@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(
            _as_db_owner([*ctl, "-m", "fast", "-w", "stop"]),
            check=False, stdout=subprocess.DEVNULL,
        )  # fmt: skip


@contextlib.contextmanager
def mlflow_server(backend_uri: str, artifacts: Path, log: Path) -> Iterator[int]:
    """`mlflow server` on 127.0.0.1 (own process group, killed on the way out); yields its port."""
    port = free_port()
    cmd = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", backend_uri, "--serve-artifacts",
        "--artifacts-destination", str(artifacts), "--workers", "1",
    ]  # fmt: skip
    with log.open("w") as handle:
        proc = subprocess.Popen(
            cmd, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({proc.returncode}); log: {log}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server not healthy after 180 s; log: {log}")
            time.sleep(1)
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def make_copy(target: Path) -> None:
    """pyproject, conf (no local overrides) and the shipped raw data: all `--env smoke` needs
    (its model is tiny-random, built in seconds)."""
    target.mkdir(parents=True)
    shutil.copy(ROOT / "pyproject.toml", target)
    shutil.copytree(ROOT / "conf", target / "conf", ignore=shutil.ignore_patterns("local"))
    (target / "conf" / "local").mkdir()
    (target / "src").mkdir()
    shutil.copytree(ROOT / "data" / "01_raw", target / "data" / "01_raw")


def run_smoke(project: Path, tracking_uri: str) -> float:
    make_copy(project)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "HF_HUB_OFFLINE": "1",
        "KEDRO_DISABLE_TELEMETRY": "true",
        # this checkout's code, whatever the venv's editable install points at
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])
        ),
    }
    env.pop("MLFLOW_REGISTRY_URI", None)
    log = project / "kedro_run.log"
    started = time.perf_counter()
    with log.open("w") as handle:
        done = subprocess.run(
            [sys.executable, "-m", "kedro", "run", "--env", "smoke"],
            cwd=project, env=env, stdout=handle, stderr=subprocess.STDOUT, check=False,
        )  # fmt: skip
    if done.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise RuntimeError(f"kedro run --env smoke failed ({done.returncode}):\n{tail}")
    return time.perf_counter() - started


def registered_model_name() -> str:
    import yaml

    promote = yaml.safe_load((ROOT / "conf/base/parameters_promote.yml").read_text())["promote"]
    return str(promote["registered_model_name"]) if promote["enabled"] else ""


def verify(
    port: int, backend_uri: str, artifacts: Path, tools: dict[str, str], token: str
) -> list[tuple[str, str]]:
    """What the server holds after the run; raises AssertionError on the first thing missing."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")
    experiment = client.get_experiment_by_name("taoflow")
    assert experiment is not None, "experiment 'taoflow' missing on the server"
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, f"expected one run on the server, found {len(runs)}"
    run = runs[0]
    rows = [("run", f"{run.info.run_name} ({run.info.status}), id {run.info.run_id}")]
    assert run.info.status == "FINISHED", run.info.status
    params, metrics = run.data.params, run.data.metrics
    assert params.get("generate.num_candidates") == "4", "smoke parameter not logged"
    assert any(k.startswith("generate.") for k in metrics), "no generate metrics"
    rows += [("params", str(len(params))), ("metrics", str(len(metrics)))]
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
    path = client.download_artifacts(run.info.run_id, "config/resolved_config.yml")
    resolved = Path(path).read_text()
    assert "rounds: 2" in resolved, "resolved config lacks the smoke override"
    assert "tracking_uri: '***'" in resolved or "tracking_uri: ***" in resolved, (
        "the tracking URI from the environment is not masked in the resolved config"
    )
    served = list(artifacts.rglob("resolved_config.yml"))
    assert served, f"no resolved_config.yml under the artifact root {artifacts}"
    rows.append(("resolved config", f"{run.info.artifact_uri}/config/resolved_config.yml"))
    rows.append(
        ("artifact files on the server", str(sum(f.is_file() for f in artifacts.rglob("*"))))
    )

    name = registered_model_name()
    if name:
        versions = client.search_model_versions(f"name='{name}'")
        assert versions, f"no version of registered model {name!r}"
        version = max(versions, key=lambda v: int(v.version))
        assert version.run_id == run.info.run_id, "registered version from another run"
        decision = run.data.tags.get("taoflow.gate.decision")
        alias = client.get_model_version_by_alias(name, decision) if decision else None
        assert alias is not None and alias.version == version.version, f"alias {decision!r} not set"
        rows.append(("registered model", f"{name} v{version.version} @{decision}"))
    traces = client.search_traces(locations=[experiment.experiment_id])
    rows.append(("traces in the run's experiment", str(len(traces))))

    import psycopg2

    dsn = backend_uri.replace("postgresql+psycopg2://", "postgresql://")
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs WHERE run_uuid = %s", (run.info.run_id,))
        assert cur.fetchone()[0] == 1, "run row missing from PostgreSQL"
        cur.execute("SELECT count(*) FROM params WHERE run_uuid = %s", (run.info.run_id,))
        n_params = cur.fetchone()[0]
    rows.append(("PostgreSQL rows", f"runs 1, params {n_params}"))

    dump = subprocess.run(
        [tools["pg_dump"], "--data-only", dsn], capture_output=True, check=True
    ).stdout
    assert len(dump) > 10_000, "suspiciously small database dump"
    leaks = [
        str(f) for f in artifacts.rglob("*") if f.is_file() and token.encode() in f.read_bytes()
    ]
    if token.encode() in dump:
        leaks.append("the PostgreSQL store")
    assert not leaks, f"the tracking URI's password leaked into: {leaks}"
    rows.append(("URI password in store or artifacts", f"absent ({len(dump)} B dump scanned)"))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--install", action="store_true", help="apt-get install postgresql if missing"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    parser.add_argument("--print-requirements", action="store_true", help=f"print the {EXTRA} pins")
    args = parser.parse_args()
    if args.print_requirements:
        print(" ".join(extra_requirements()))
        return 0
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        print(f"psycopg2 missing: pip install {' '.join(extra_requirements())}", file=sys.stderr)
        return 2
    tools = ensure_postgres(args.install)
    workdir = Path(tempfile.mkdtemp(prefix="taoflow-mlflow-server-"))
    password = secrets.token_hex(12)  # the database's
    token = "tk" + secrets.token_hex(12)  # the one in the client's tracking URI
    started = time.perf_counter()
    try:
        with postgres_cluster(tools, workdir, password) as backend_uri:
            artifacts = workdir / "artifacts"
            artifacts.mkdir()
            with mlflow_server(backend_uri, artifacts, workdir / "mlflow_server.log") as port:
                uri = f"http://taoflow:{token}@127.0.0.1:{port}"
                print(
                    f"PostgreSQL + mlflow server up on 127.0.0.1:{port} ({time.perf_counter() - started:.0f} s)"
                )
                seconds = run_smoke(workdir / "project", uri)
                rows = verify(port, backend_uri, artifacts, tools, token)
    except Exception as err:  # noqa: BLE001 - one line, the logs named; teardown ran already
        print(f"check-mlflow-server FAILED: {err}", file=sys.stderr)
        print(f"logs kept in {workdir}", file=sys.stderr)
        return 1
    print(f"\n`kedro run --env smoke` against the server: {seconds:.0f} s\n")
    print("| what | on the server |\n| --- | --- |")
    for what, value in rows:
        print(f"| {what} | {value} |")
    print(f"\ncheck-mlflow-server passed in {time.perf_counter() - started:.0f} s")
    if args.keep:
        print(f"kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
