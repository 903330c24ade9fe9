"""The ``taoflow`` console script: ``serve``, ``prepare-base``, ``push-to-hub``; Kedro's ``run``.

``taoflow run [kedro run options]`` and ``taoflow --pipeline train --env databricks ...`` (options
first, no command: the arguments a Databricks wheel task or another scheduler passes to the
package's entry point) run the Kedro project like ``kedro run`` / ``python -m taoflow``, from any
working directory (``--conf-source`` says where the configuration is). ``TAOFLOW_WORKDIR``, when
set, is the folder such a run works in: the catalog's relative ``data/`` paths resolve there (on
Databricks, a Unity Catalog volume every task of every job shares: conf/databricks).

``kedro run`` is Kedro's own command with one change: a failure prints one line (the user's
error, or the exception of a bug) and the path of a log file holding the traceback, and exits
non-zero (2: user-caused, 1: anything else); ``TAOFLOW_TRACEBACK=1`` shows the traceback instead.

The console script's commands read the Kedro project's configuration (``conf/base`` + ``--env``), so the server logs to
the same MLflow store and serves the same registered model that ``kedro run`` produced.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from taoflow.errors import UserError, failure_report, verbose

logger = logging.getLogger("taoflow.cli")


def _project(args: argparse.Namespace) -> tuple[dict, dict, dict]:
    from taoflow.serving.config import load_project_config

    root = Path(args.project_path).resolve()
    os.chdir(root)  # relative paths in conf (data/, sqlite:///mlflow.db) mean what kedro run means
    return load_project_config(root, args.env)


def _setup_mlflow(mlflow_conf: dict) -> None:
    import mlflow

    server = mlflow_conf.get("server") or {}
    if server.get("mlflow_tracking_uri"):
        mlflow.set_tracking_uri(server["mlflow_tracking_uri"])
    if server.get("mlflow_registry_uri"):
        mlflow.set_registry_uri(server["mlflow_registry_uri"])


def serve(args: argparse.Namespace) -> int:
    """Load the configured model and serve it until interrupted."""
    import uvicorn

    from taoflow.serving import TraceRecorder, build_config, create_app, load_served_policy
    from taoflow.serving.config import check_bind_auth, resolve_token

    params, credentials, mlflow_conf = _project(args)
    overrides = {
        k: v for k, v in {"model": args.model, "host": args.host, "port": args.port}.items()
    }
    values = dict(params.get("serve") or {})
    values.update({k: v for k, v in overrides.items() if v is not None})
    if args.no_capture:
        values["capture"] = {**(values.get("capture") or {}), "enabled": False}
    config = build_config(values)
    _setup_mlflow(mlflow_conf)
    token = resolve_token(config.auth, credentials)
    check_bind_auth(config.host, token)
    policy, version = load_served_policy(
        config.model, config.registered_model, config.cache_dir, config.dtype
    )
    recorder = (
        TraceRecorder(
            config.capture.experiment,
            version,
            redact=config.capture.redact_pii,
            lineage=policy.lineage,
        )
        if config.capture.enabled
        else None
    )
    app = create_app(policy, config, model_version=version, token=token, recorder=recorder)
    logger.info(
        "Serving %s on http://%s:%d (capture: %s, auth: %s)",
        version,
        config.host,
        config.port,
        config.capture.experiment if recorder else "off",
        "bearer token" if token else "none",
    )
    uvicorn.run(app, host=config.host, port=config.port, log_level=args.log_level)
    return 0


def prepare_base(args: argparse.Namespace) -> int:
    """Materialise the configured (or given) model reference once, e.g. convert the embedded GGUF."""
    from taoflow.config.base import validate_block
    from taoflow.models import resolve_model_path

    params, _, _ = _project(args)
    model = validate_block("model", params.get("model"))
    print(resolve_model_path(args.model or model.name_or_path, args.cache_dir or model.cache_dir))
    return 0


def push_to_hub(args: argparse.Namespace) -> int:
    """Upload a saved policy folder (with its model card) to a Hugging Face hub repository."""
    from taoflow.cards import push_to_hub as push

    url = push(args.folder, args.repo_id, private=args.private, commit_message=args.message)
    print(url)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """``taoflow``'s commands; each one's ``--help`` says what it does and where its knobs live."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--project-path", default=".", help="Kedro project root (default: .)")
    common.add_argument(
        "--env", default=None, help="Kedro environment over conf/base + conf/local (default: none)"
    )
    common.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    parser = argparse.ArgumentParser(
        prog="taoflow",
        description="taoflow's own commands: serve the tuned model, prepare the base model, "
        "push a policy to a hub. Training, evaluation and registration are Kedro pipelines: "
        "`kedro run` (the full job), `kedro run --env smoke` (a two-minute try on a tiny model).",
        epilog="Run `taoflow <command> --help` for a command's options. They read the project's "
        "configuration (conf/base, conf/local, --env) like `kedro run` does. `taoflow run "
        "[kedro run options]`, or the options alone (`taoflow --pipeline train --env X`, what a "
        "Databricks wheel task passes), runs the Kedro project: `taoflow run --help` lists them.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="<command>")

    p = commands.add_parser(
        "serve",
        parents=[common],
        help="serve the champion (or any model) behind an OpenAI-compatible API",
        description="Serve a model behind an OpenAI-compatible API: POST /v1/chat/completions "
        "(stream: true streams token by token), GET /v1/models, POST /v1/feedback, GET /health. "
        "Each answer is recorded as an MLflow trace tagged with the model version that answered. "
        "Set TAOFLOW_SERVE_TOKEN to require a bearer token; knobs: conf/base/parameters_serve.yml.",
    )
    p.add_argument("--model", help="champion (default), models:/NAME@ALIAS, or a model reference")
    p.add_argument("--host", help="bind address (default from serve.host: 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default from serve.port: 8000)")
    p.add_argument("--no-capture", action="store_true", help="do not record traces")
    p.set_defaults(func=serve)

    p = commands.add_parser(
        "prepare-base",
        parents=[common],
        help="convert/cache the configured base model once and print its folder",
        description="Resolve the configured model reference (model.name_or_path: embedded, a "
        "folder, a hub id, tiny-random) into a Hugging Face folder under model.cache_dir, "
        "converting the embedded GGUF on first use, and print the folder's path.",
    )
    p.add_argument("--model", help="model reference (default: params model.name_or_path)")
    p.add_argument("--cache-dir", help="where to materialise it (default: model.cache_dir)")
    p.set_defaults(func=prepare_base)

    p = commands.add_parser(
        "push-to-hub",
        help="upload a saved policy folder and its model card to the Hugging Face Hub",
        description="Upload a saved policy folder (weights, tokenizer, taoflow.json lineage and "
        "its README.md model card) to a hub model repository, creating the repository if "
        "needed. The token comes from HF_TOKEN (or `hf auth login`) and is never printed.",
    )
    p.add_argument("folder", help="a saved policy folder, e.g. data/06_models/round_1/policy")
    p.add_argument("repo_id", help="hub repository, e.g. your-name/taoflow-smollm2-dpo")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--message", help="commit message (default: taoflow policy <folder name>)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    p.set_defaults(func=push_to_hub)
    return parser


WORKDIR_ENV = "TAOFLOW_WORKDIR"


def is_kedro_run(argv: Sequence[str]) -> bool:
    """``run ...`` or options with no command before them (``--pipeline train --env X``): a
    Kedro run. A bare ``taoflow`` or ``--help`` stays with the commands (no run by accident)."""
    if not argv:
        return False
    first = argv[0]
    return first == "run" or (first.startswith("-") and first not in ("-h", "--help"))


def _enter_workdir(workdir: Path) -> None:
    """Work in ``workdir``. Kedro resolves relative catalog paths against the project folder it
    finds from the working directory (itself or a parent), so one above ``workdir`` would send
    ``data/`` there instead: refused."""
    from kedro.utils import find_kedro_project

    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)
    project = find_kedro_project(Path.cwd())
    if project is not None and project.resolve() != Path.cwd().resolve():
        raise UserError(
            f"{WORKDIR_ENV}={workdir} is inside the Kedro project {project}, whose data/ the run "
            f"would use: choose a folder outside it (or unset {WORKDIR_ENV} and run from {project})"
        )


def run_kedro(argv: Sequence[str]) -> int:
    """Kedro's ``run`` command (with the one-line failure report) on these arguments, the
    project configured by package name as Kedro's own ``__main__`` does, so no ``kedro``
    executable and no project folder as working directory are needed."""
    from kedro.framework.project import configure_project

    workdir = os.environ.get(WORKDIR_ENV)
    if workdir:
        try:
            _enter_workdir(Path(workdir))
        except UserError as err:
            click.echo(f"Error: {err}", err=True)
            return 2
    configure_project(Path(__file__).parent.name)
    command = _guarded_run()
    try:
        command.main(args=list(argv), prog_name="taoflow run", standalone_mode=False)
    except click.ClickException as err:  # a bad option: click's own message and exit code
        err.show()
        return err.exit_code
    except click.Abort:
        return 1
    except SystemExit as done:  # the guarded run's one-line failure exit
        return done.code if isinstance(done.code, int) else 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if is_kedro_run(argv):
        return run_kedro(argv[1:] if argv[0] == "run" else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return args.func(args)
    except (LookupError, FileNotFoundError, ValueError, UserError) as err:
        logger.error("%s", err)
        return 2


# Kedro treats ``<package>/cli.py`` as the project's CLI extension and needs a click group named
# ``cli`` in it: its commands join ``kedro``'s, so ``kedro serve`` works like ``taoflow serve``.
import click  # noqa: E402


class _ProjectCommands(click.Group):
    """The project's ``kedro`` commands; ``run`` is built on first use, so that importing this
    module (``taoflow --help``) neither imports Kedro's CLI nor lets it configure logging."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), "run"})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "run" and cmd_name not in self.commands:
            self.add_command(_guarded_run())
        return super().get_command(ctx, cmd_name)


@click.group(name="taoflow", cls=_ProjectCommands)
def cli() -> None:
    """taoflow project commands."""


@cli.command(
    name="serve",
    # every argument, --help included, goes to `taoflow serve`, whose help lists the options
    context_settings={
        "ignore_unknown_options": True,
        "allow_extra_args": True,
        "help_option_names": [],
    },
)
@click.pass_context
def _kedro_serve(ctx: click.Context) -> None:
    """Serve a model behind an OpenAI-compatible API (see `taoflow serve --help`)."""
    sys.exit(main(["serve", *ctx.args]))


def _guarded_run() -> click.Command:
    """Kedro's ``run`` command whose failures print one line (see the module docstring)."""
    from kedro.framework.cli.project import run as kedro_run

    def callback(*args: object, **kwargs: object) -> object:
        try:
            return kedro_run.callback(*args, **kwargs)
        except Exception as err:
            if verbose():
                raise
            line, code = failure_report(err)
            click.echo(line, err=True)
            sys.exit(code)

    return click.Command(
        name="run",
        callback=callback,
        params=kedro_run.params,
        help=kedro_run.help,
        short_help=kedro_run.short_help,
        context_settings=kedro_run.context_settings,
    )


if __name__ == "__main__":
    sys.exit(main())
