"""The project's config loader: experiments layered over the user's own settings.

Kedro's ``OmegaConfigLoader`` reads two folders, ``conf/base`` and the run's env, so
``kedro run --env smoke`` silently drops ``conf/local`` — a user's ``usage_files``, model or judge
override, and their credentials, would vanish under every experiment. :class:`LayeredConfigLoader`
reads three instead: ``base`` → ``local`` (the user's settings) → the experiment env, each merged
over the previous one with the project's merge strategy. Where the user and the experiment both
set a key to different values, it refuses with one line naming both files (which one should win
is the user's call: remove one, or pass the value with ``--params``, which beats both).

It also refuses an env that has no folder (Kedro would fail later, and kedro-mlflow's hook hides
its message behind MLflow's), naming the missing path and the envs that exist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.config import OmegaConfigLoader

from taoflow.errors import UserError

USER_ENV = "local"


class ConfigConflictError(UserError):
    """The user's ``conf/local`` and the experiment env set one key to different values."""


class UnknownEnvError(UserError):
    """``--env`` names a folder that does not exist under the configuration source."""


def _leaves(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b.c": value}`` for every non-mapping value of a nested mapping."""
    if not isinstance(config, dict) or not config:
        return {prefix: config}
    out: dict[str, Any] = {}
    for key, value in config.items():
        out.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _covered(path: str, keys: set[str]) -> bool:
    """Whether ``path`` or one of its parents (``a`` for ``a.b``) is in ``keys``."""
    parts = path.split(".")
    return any(".".join(parts[:i]) in keys for i in range(1, len(parts) + 1))


def _clash(user: dict[str, Any], env: dict[str, Any], soft: bool) -> tuple[str, str] | None:
    """The first key both layers set differently (``(top-level key, dotted path)``), if any.

    ``soft`` (key-by-key merge): compares values leaf by leaf; else (top-level keys replaced whole)
    compares whole top-level entries.
    """
    for key in sorted(set(user) & set(env)):
        if user[key] == env[key]:
            continue
        if not soft:
            return key, key
        mine, theirs = _leaves(user[key], key), _leaves(env[key], key)
        for path in sorted(mine):
            for other in sorted(theirs):
                if (path == other or _covered(path, {other}) or _covered(other, {path})) and (
                    mine[path] != theirs.get(path, object())
                ):
                    return key, path
    return None


def _defining_file(configs: dict[Path, Any], key: str, root: Path) -> str:
    """The file among ``configs`` that sets top-level ``key`` (relative to ``root``)."""
    for path, config in sorted(configs.items()):
        if key in config:
            try:
                return Path(path).relative_to(root).as_posix()
            except ValueError:
                return Path(path).as_posix()
    return "?"


class LayeredConfigLoader(OmegaConfigLoader):
    """``OmegaConfigLoader`` that reads ``base`` → ``local`` (the user's) → the experiment env.

    With no ``--env`` (or ``--env local``) it is Kedro's loader unchanged. Otherwise the user's
    folder is merged between base and the experiment, so the user's data, model and judge reach
    every experiment; a key both set differently stops with :class:`ConfigConflictError`.
    """

    def __init__(self, conf_source: str, env: str | None = None, **kwargs: Any) -> None:
        super().__init__(conf_source=conf_source, env=env, **kwargs)
        run_env = self.env or self.default_run_env
        if self._protocol == "file" and run_env and run_env != self.base_env:
            folder = Path(self._get_conf_env_path(run_env))
            if not folder.is_dir() and run_env != USER_ENV:
                envs = sorted(
                    p.name
                    for p in Path(self.conf_source).iterdir()
                    if p.is_dir() and not p.name.startswith(".")
                )
                raise UnknownEnvError(
                    f"environment {run_env!r} does not exist: no folder {folder} "
                    f"(envs here: {', '.join(envs)})"
                )

    def _layered(self) -> bool:
        run_env = self.env or self.default_run_env
        if run_env in (self.base_env, USER_ENV) or self._protocol != "file":
            return False
        return Path(self._get_conf_env_path(USER_ENV)).is_dir()

    def __getitem__(self, key: str) -> dict[str, Any]:
        if key in self or key not in self.config_patterns or not self._layered():
            return super().__getitem__(key)
        self._register_runtime_params_resolver()
        base_configs, env_configs, base_path, env_path, processed = self._read_raw_config(key)
        user_path = self._get_conf_env_path(USER_ENV)
        user_configs = self._read_dir_configs(
            user_path, [*self.config_patterns[key]], key, processed, key == "credentials"
        )
        if not user_configs:
            return super().__getitem__(key)
        # The user's layer goes through Kedro's own merge and resolution, as if it were the env.
        user_and_base = self._resolve_from_raw_config(
            key, base_configs, user_configs, base_path, user_path, processed
        )
        env_config = self._merge_and_resolve(key, env_configs) if env_configs else {}
        self._check_conflict(key, user_configs, env_configs, env_path)
        return self._merge_configs(user_and_base, env_config, key, env_path)

    def _check_conflict(
        self,
        key: str,
        user_configs: dict[Path, Any],
        env_configs: dict[Path, Any],
        env_path: str,
    ) -> None:
        if not env_configs:
            return
        soft = self.merge_strategy.get(key, "destructive") == "soft"
        # unresolved values: what each file says (resolving would apply runtime params to both)
        user = {k: v for c in user_configs.values() for k, v in _plain(c).items()}
        env = {k: v for c in env_configs.values() for k, v in _plain(c).items()}
        clash = _clash(user, env, soft)
        if clash is None:
            return
        top, path = clash
        if key == "parameters" and _covered(path, set(_leaves(dict(self.runtime_params)))):
            return  # --params sets it: both files are overridden alike
        root = Path(self.conf_source).parent
        mine = _defining_file(user_configs, top, root)
        theirs = _defining_file(env_configs, top, root)
        env_name = Path(env_path).name
        raise ConfigConflictError(
            f"{path} is set in your {mine} and differently in {theirs} (--env {env_name}): "
            f"remove it from one of them, or pass the value with --params {path}=..."
        )


def _plain(config: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf

    container = OmegaConf.to_container(config, resolve=False)
    return container if isinstance(container, dict) else {}


__all__ = ["USER_ENV", "ConfigConflictError", "LayeredConfigLoader", "UnknownEnvError"]
