"""Start-up stays cheap: what every `kedro` command imports before its first node.

Structural, not timed: the project's settings, the pipeline registry and the graph built from
the configuration must not import torch, transformers or TRL (seconds each), nor `kedro
registry list` as a whole. Each check runs in a fresh interpreter, since
this test process has long imported them all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "transformers", "trl")

BUILD_REGISTRY = """
import json, sys
from kedro.framework.project import configure_project
configure_project("taoflow")
import taoflow.settings
from taoflow.pipeline_registry import register_pipelines
pipelines = register_pipelines()
assert "__default__" in pipelines and len(pipelines["__default__"].nodes) > 10
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in {heavy})))
"""


def _run(code: str, cwd: Path, cache: Path) -> list[str]:
    env = {
        **os.environ,
        "XDG_CACHE_HOME": str(cache),
        "HF_HUB_OFFLINE": "1",
        "KEDRO_DISABLE_TELEMETRY": "true",
    }
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture()
def warm_cache(tmp_path, monkeypatch) -> Path:
    """A cache folder holding TRL's config field names, as after any first command."""
    from taoflow.config import train

    cache = tmp_path / "cache"
    with monkeypatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(cache))
        train.library_fields.cache_clear()
        train.library_fields()
    train.library_fields.cache_clear()
    assert list(cache.rglob("config-fields-*.json"))
    return cache


def test_settings_and_registry_do_not_import_torch_transformers_or_trl(kedro_project, warm_cache):
    loaded = _run(BUILD_REGISTRY.format(heavy=set(HEAVY)), kedro_project, warm_cache)
    assert loaded == [], (
        f"building the registry imported {sorted({m.split('.')[0] for m in loaded})}"
    )


def test_registry_list_command_does_not_import_torch_transformers_or_trl(kedro_project, warm_cache):
    """The whole `kedro registry list` command, plugins included. (MLflow it does import:
    Kedro loads kedro-mlflow's CLI commands for every command, and that module imports it.)"""
    code = (
        "import sys, json\n"
        "from kedro.framework.cli.cli import main\n"
        "sys.argv = ['kedro', 'registry', 'list']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as stop:\n"
        "    assert not stop.code, stop.code\n"
        "finally:\n"
        "    print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{set(HEAVY)})))\n"
    )
    loaded = _run(code, kedro_project, warm_cache)
    assert loaded == [], (
        f"`kedro registry list` imported {sorted({m.split('.')[0] for m in loaded})}"
    )


def test_trl_field_names_are_cached_per_library_versions(tmp_path, monkeypatch):
    """The cache holds exactly what the libraries say, and a version change misses it."""
    from taoflow.config import train

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    train.library_fields.cache_clear()
    try:
        fields = train.library_fields()
        (path,) = tmp_path.rglob("config-fields-*.json")
        assert json.loads(path.read_text()) == fields
        import trl

        assert set(fields["dpo"]) == set(train.dataclass_fields(trl.DPOConfig))
        real = train.importlib.metadata.version
        monkeypatch.setattr(
            train.importlib.metadata,
            "version",
            lambda name: "0.0-other" if name == "trl" else real(name),
        )
        assert train._fields_cache_file() != path
    finally:
        train.library_fields.cache_clear()


@pytest.mark.parametrize("probe", [False, True], ids=["plain", "after-a-find_spec-probe"])
def test_torch_is_seeded_when_imported_after_seed_everything(probe):
    """seed_everything before torch is imported seeds it on import: the same first draw. A
    probe first (importlib.util.find_spec, as transformers' is_torch_available does) must not
    use the seed up: the reward model's head was initialised unseeded that way."""
    probe_line = "importlib.util.find_spec('torch')\n" if probe else ""
    code = (
        "import sys, importlib.util\n"
        "from taoflow.core.ids import seed_everything\n"
        "seed_everything(123)\n"
        f"{probe_line}"
        "assert 'torch' not in sys.modules\n"
        "import torch\n"
        "first = torch.rand(4).tolist()\n"
        "torch.manual_seed(123)\n"
        "print(first == torch.rand(4).tolist())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert done.stdout.strip() == "True"


def test_lazy_module_behaves_as_the_module():
    from taoflow.core.lazy import LazyModule

    lazy = LazyModule("json")
    assert lazy.dumps({"a": 1}) == json.dumps({"a": 1})
    assert "dumps" in dir(lazy)
    with pytest.raises(AttributeError):
        _ = lazy.no_such_attribute
