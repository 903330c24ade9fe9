"""The READMEs say what the project does: counts from the files, commands that exist with help."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "scripts"))
try:
    import update_docs_counts
finally:
    sys.path.pop(0)

README = PROJECT_ROOT / "README.md"


def taoflow(*args: str) -> subprocess.CompletedProcess:
    """``taoflow ...`` as a user runs it: a fresh process of the console script's ``main``."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "src")}
    code = "import sys; from taoflow.cli import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=PROJECT_ROOT,
    )


def readme_commands() -> dict[str, str]:
    """``{subcommand: description}`` from README's "Commands" table."""
    section = README.read_text().split("## Commands", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `taoflow ([a-z-]+)` \| (.+?) \|$", section, re.M)
    return dict(rows)


def test_readme_counts_match_the_shipped_files():
    for readme, expected in update_docs_counts.targets():
        assert readme.read_text() == expected, (
            f"{readme} disagrees with data/01_raw: run python scripts/update_docs_counts.py"
        )


def test_counts_are_read_from_the_files(tmp_path):
    """A changed file changes the numbers the READMEs must state (the check is not vacuous)."""
    raw = tmp_path / "data" / "01_raw"
    raw.mkdir(parents=True)
    for name in ("usage.jsonl", "usage_gold.jsonl", "benchmark.jsonl", "README.md"):
        (raw / name).write_text((PROJECT_ROOT / "data/01_raw" / name).read_text())
    (tmp_path / "README.md").write_text(README.read_text())
    before = update_docs_counts.count(raw)
    lines = (raw / "benchmark.jsonl").read_text().splitlines()
    (raw / "benchmark.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    assert update_docs_counts.count(raw)["benchmark"] == before["benchmark"] - 1
    assert update_docs_counts.main(["--root", str(tmp_path), "--check"]) == 1
    assert update_docs_counts.main(["--root", str(tmp_path)]) == 0
    assert f"| `benchmark.jsonl` | {before['benchmark'] - 1} |" in (raw / "README.md").read_text()
    assert update_docs_counts.main(["--root", str(tmp_path), "--check"]) == 0


def test_quick_start_sits_beside_install_tests_and_the_main_job():
    first_block = README.read_text().split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()]
    assert commands == [
        "make install && source .venv/bin/activate",
        "kedro run --env smoke",
        "make test",
        "kedro run",
    ]
    assert "try this first" in first_block


def test_taoflow_help_lists_every_command_the_readme_documents():
    from taoflow.cli import build_parser

    documented = readme_commands()
    assert documented, "README has no Commands table"
    result = taoflow("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: taoflow"), result.stdout[:300]  # no log lines first
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")  # noqa: SLF001
    helps = {c.dest: c.help for c in subparsers._choices_actions}  # noqa: SLF001
    assert set(documented) == set(helps), "README's Commands table and taoflow's commands differ"
    for command, description in documented.items():
        assert command in result.stdout
        assert helps[command] and description.startswith(helps[command]), command


@pytest.mark.parametrize("command", sorted(readme_commands()))
def test_each_command_has_real_help(command):
    result = taoflow(command, "--help")
    assert result.returncode == 0, result.stderr
    usage, description = result.stdout.split("\n\n", 2)[:2]
    assert usage.startswith(f"usage: taoflow {command}")
    assert len(description.split()) >= 12, f"`taoflow {command} --help` says too little"
    assert "options:" in result.stdout


def test_the_new_user_check_reads_its_commands_from_the_readme():
    sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))
    try:
        import new_user
    finally:
        sys.path.pop(0)
    args = new_user.argparse.Namespace(install=False, tests=False, main_job=False)
    steps = {s.command: s for s in new_user.plan(README.read_text(), args)}
    assert steps["kedro run --env smoke"].skip is None
    assert steps["make install"].skip and steps["kedro run"].skip and steps["make test"].skip
    helps = steps["taoflow --help"].expect_lines
    assert len(helps) == 1 + len(readme_commands())
    misspelt = steps["kedro run --env doesnotexist"]
    good = "INFO starting\nError: environment 'doesnotexist' does not exist: no folder x\n"
    assert new_user.check(misspelt, 2, good) == []
    assert new_user.check(misspelt, 1, good + "Error: again\nTraceback (most recent call last)\n")
