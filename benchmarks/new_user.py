"""A new user's first minutes: README's commands, run in a fresh clone, with what they print checked.

    python benchmarks/new_user.py [--install] [--tests] [--main-job] [--keep DIR]
    make new-user                       # the same, through the Makefile

Clones the project's last commit (``git clone`` of this checkout's HEAD: uncommitted changes are
not in it) into a temporary folder and runs there, as a new user would:

* the commands of README's first ``bash`` block, in order, read from README itself so this check
  cannot drift from the docs: ``make install`` only with ``--install`` (else this interpreter's
  virtual environment is reused, with the clone's ``src`` first on ``PYTHONPATH``), ``make test``
  only with ``--tests``, the main job ``kedro run`` only with ``--main-job`` (over 20 minutes on 2 cores);
  the quick start ``kedro run --env smoke`` always;
* ``taoflow --help``, expecting every command of README's "Commands" table;
* ``kedro run --env <name>`` with the misspelt env README's troubleshooting section shows,
  expecting exit code 2 and that one ``Error: environment '<name>' does not exist`` line.

Prints a pass/fail table (exit code, the key lines, wall time) and exits 1 if any step failed.
Opt-in (a smoke run takes minutes): not part of ``make test``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Step:
    """One command a new user types, and what its output must show."""

    command: str
    expect_rc: int = 0
    expect_lines: list[str] = field(default_factory=list)  # regexes, each must match some line
    one_error_line: bool = False  # exactly one line starting with "Error:"
    skip: str | None = None  # why it is not run
    timeout: float = 1800


@dataclass
class Outcome:
    step: Step
    rc: int | None = None
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.step.skip:
            return "skip"
        return "FAIL" if self.problems else "pass"


def readme_quick_commands(readme: str) -> list[str]:
    """The commands of README's first ``bash`` block (comments dropped)."""
    block = readme.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split(" #", 1)[0].strip() for line in block.splitlines()]
    return [c for c in commands if c and not c.startswith("#")]


def readme_taoflow_commands(readme: str) -> list[str]:
    """The subcommands README's "Commands" table documents."""
    section = readme.split("## Commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `taoflow ([a-z-]+)` \|", section, re.M)


def readme_misspelt_env(readme: str) -> str:
    """The env name README's troubleshooting section shows the unknown-env error for."""
    section = readme.split("## When something goes wrong", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"Error: environment '([\w-]+)' does not exist", section)
    if found is None:
        raise ValueError("README's troubleshooting section shows no unknown-env error line")
    return found.group(1)


def plan(readme: str, args: argparse.Namespace) -> list[Step]:
    """README's commands as steps, with what each must print."""
    steps = []
    for command in readme_quick_commands(readme):
        if command.startswith("make install"):
            steps.append(
                Step("make install", skip=None if args.install else "reusing this venv (--install)")
            )
        elif command == "make test":
            steps.append(Step(command, skip=None if args.tests else "opt-in (--tests)"))
        elif command == "kedro run":
            steps.append(
                Step(
                    command,
                    expect_lines=[r"Pipeline execution completed"],
                    skip=None if args.main_job else "over 20 min (--main-job)",
                    timeout=4 * 3600,
                )
            )
        elif command.startswith("kedro run"):
            steps.append(
                Step(
                    command,
                    expect_lines=[
                        r"Pipeline execution completed",
                        r"registry gate: taoflow-policy",
                    ],
                )
            )
        else:
            steps.append(Step(command))
    names = readme_taoflow_commands(readme)
    steps.append(
        Step("taoflow --help", expect_lines=[r"^usage: taoflow"] + [rf"^\s+{n}\b" for n in names])
    )
    env = readme_misspelt_env(readme)
    steps.append(
        Step(
            f"kedro run --env {env}",
            expect_rc=2,
            expect_lines=[rf"^Error: environment '{env}' does not exist"],
            one_error_line=True,
            timeout=600,
        )
    )
    return steps


def check(step: Step, rc: int, output: str) -> list[str]:
    """What is wrong with a step's exit code and output (empty: nothing)."""
    problems = []
    if rc != step.expect_rc:
        problems.append(f"exit code {rc}, expected {step.expect_rc}")
    lines = output.splitlines()
    for pattern in step.expect_lines:
        if not any(re.search(pattern, line) for line in lines):
            problems.append(f"no line matching {pattern!r}")
    if step.one_error_line:
        errors = [line for line in lines if line.startswith("Error:")]
        if len(errors) != 1:
            problems.append(f"{len(errors)} 'Error:' lines, expected 1")
        if "Traceback" in output:
            problems.append("a traceback was printed")
    return problems


def run_step(step: Step, clone: Path, env: dict[str, str], log: Path) -> Outcome:
    outcome = Outcome(step)
    if step.skip:
        return outcome
    started = time.monotonic()
    try:
        done = subprocess.run(
            ["bash", "-c", step.command],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=step.timeout,
            check=False,
        )
        outcome.rc, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as err:
        outcome.rc, output = None, f"{err.stdout or ''}{err.stderr or ''}"
        outcome.problems.append(f"timed out after {step.timeout:.0f} s")
    outcome.seconds = time.monotonic() - started
    with log.open("a") as handle:
        handle.write(f"\n$ {step.command}\n{output}\n[exit {outcome.rc}]\n")
    if outcome.rc is not None:
        outcome.problems += check(step, outcome.rc, output)
    return outcome


def user_env(clone: Path, install: bool) -> dict[str, str]:
    """The shell a new user has after ``source .venv/bin/activate``."""
    env = dict(os.environ)
    env.pop("TAOFLOW_TRACEBACK", None)
    if install:
        venv = clone / ".venv"
        env.pop("PYTHONPATH", None)
    else:
        venv = Path(sys.prefix)
        env["PYTHONPATH"] = str(clone / "src")  # the clone's code, not the venv's install
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def table(outcomes: list[Outcome]) -> str:
    rows = ["| step | command | result | exit | wall time (s) | notes |", "| --- " * 6 + "|"]
    for i, o in enumerate(outcomes, 1):
        rc = "–" if o.rc is None else str(o.rc)
        secs = "–" if o.step.skip else f"{o.seconds:.1f}"
        notes = o.step.skip or "; ".join(o.problems) or "ok"
        rows.append(f"| {i} | `{o.step.command}` | {o.status} | {rc} | {secs} | {notes} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--install", action="store_true", help="run `make install` in the clone")
    parser.add_argument("--tests", action="store_true", help="run `make test` in the clone")
    parser.add_argument("--main-job", action="store_true", help="run the full `kedro run`")
    parser.add_argument("--keep", type=Path, help="clone into this folder and keep it")
    args = parser.parse_args()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    steps = plan(readme, args)
    work = args.keep or Path(tempfile.mkdtemp(prefix="taoflow-new-user-"))
    clone = work / "taoflow"
    if clone.exists():
        shutil.rmtree(clone)
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=clone,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    env = user_env(clone, args.install)
    if not args.install:
        env["VENV"] = sys.prefix  # `make test` in the clone uses the reused venv
    log = work / "new_user.log"
    print(f"fresh clone of {head} in {clone}", flush=True)
    outcomes = []
    for step in steps:
        print(f"$ {step.command}" + (f"  (skipped: {step.skip})" if step.skip else ""), flush=True)
        outcomes.append(run_step(step, clone, env, log))
    print(table(outcomes))
    failed = [o for o in outcomes if o.status == "FAIL"]
    if failed:
        print(f"kept {work} for a look (commands and their outputs: {log})")
    elif not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{len(outcomes) - len(failed)} of {len(outcomes)} steps passed or skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
