"""Serving configuration: the ``serve:`` block of ``conf/<env>/parameters_serve.yml``, validated.

The server is not a Kedro node, so it reads the project's configuration through the project's
own config loader (same environments, same credentials) and validates it with pydantic, so a
typo in YAML fails at start-up with the key's name instead of surfacing as odd behaviour.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from taoflow.config.base import StrictModel
from taoflow.errors import UserError

logger = logging.getLogger(__name__)

CHAMPION = "champion"


class AuthConfig(StrictModel):
    """Where the bearer token comes from. Without one the server only binds to loopback."""

    token_env: str | None = Field(
        "TAOFLOW_SERVE_TOKEN",
        description="Env var holding the bearer token; unset/empty: no auth (loopback only).",
    )
    credentials_key: str | None = Field(
        None, description="Else a credentials.yml key ({token: ...} or the token itself)."
    )


class CaptureConfig(StrictModel):
    """Usage capture: every answered request becomes one MLflow trace in ``experiment``."""

    enabled: bool = True
    experiment: str = "taoflow-serve"
    redact_pii: bool = True


class ServeConfig(StrictModel):
    """Validated ``serve:`` parameters (``conf/base/parameters_serve.yml``)."""

    model: str = CHAMPION
    registered_model: str = "taoflow-policy"
    cache_dir: str = "data/06_models"
    dtype: str = "float32"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_request_bytes: int = Field(65536, ge=1024)
    max_prompt_tokens: int = Field(1024, ge=1)
    max_tokens_cap: int = Field(256, ge=1)
    default_max_tokens: int = Field(128, ge=1)
    default_temperature: float = Field(1.0, ge=0.0, le=2.0)
    default_top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_n: int = Field(4, ge=1)
    max_batch_size: int = Field(8, ge=1)
    max_queue: int = Field(64, ge=1)
    batch_window_ms: float = Field(10.0, ge=0.0)
    token_budget: int = Field(8192, ge=1)
    seed: int = 0
    auth: AuthConfig = AuthConfig()
    capture: CaptureConfig = CaptureConfig()

    @model_validator(mode="after")
    def _default_within_cap(self) -> ServeConfig:
        if self.default_max_tokens > self.max_tokens_cap:
            raise ValueError(
                f"serve.default_max_tokens ({self.default_max_tokens}) exceeds "
                f"serve.max_tokens_cap ({self.max_tokens_cap})."
            )
        return self


def build_config(values: dict[str, Any] | None) -> ServeConfig:
    """Validate a ``serve:`` mapping; :class:`ParameterError` (a ValueError) names the key."""
    from taoflow.config.base import validate_block

    return validate_block("serve", dict(values or {}))


def load_project_config(
    project_path: str | Path | None = None, env: str | None = None
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``(parameters, credentials, mlflow)`` of the Kedro project at ``project_path``.

    Uses the project's own settings (config loader class and arguments), exactly as ``kedro run
    --env ENV`` would resolve them. Outside a Kedro project every mapping is empty.
    """
    from kedro.framework.project import settings
    from kedro.framework.startup import bootstrap_project

    root = Path(project_path or Path.cwd()).resolve()
    if not (root / "pyproject.toml").is_file():
        logger.info("%s is not a Kedro project: serving with built-in defaults", root)
        return {}, {}, {}
    bootstrap_project(root)
    conf_source = Path(settings.CONF_SOURCE)
    if not conf_source.is_absolute():
        conf_source = root / conf_source
    loader = settings.CONFIG_LOADER_CLASS(
        conf_source=str(conf_source),
        env=env or os.environ.get("KEDRO_ENV"),
        **settings.CONFIG_LOADER_ARGS,
    )
    out = []
    for key in ("parameters", "credentials", "mlflow"):
        try:
            out.append(dict(loader[key]))
        except UserError:  # conf/local and the env disagree: say so, never serve the wrong one
            raise
        except Exception:  # noqa: BLE001 - a missing credentials.yml is normal
            out.append({})
    return out[0], out[1], out[2]


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def check_bind_auth(host: str, token: str | None) -> None:
    """Refuse to serve beyond loopback without a bearer token (ValueError, one line)."""
    if token is None and not is_loopback(host):
        raise ValueError(
            f"refusing to serve on {host} without a bearer token: set TAOFLOW_SERVE_TOKEN (or "
            "serve.auth.token_env / serve.auth.credentials_key), or bind to 127.0.0.1."
        )


def resolve_token(auth: AuthConfig, credentials: dict[str, Any]) -> str | None:
    """The configured bearer token: the env variable first, then the Kedro credentials key.

    A credentials entry may be the token itself or a mapping with a ``token`` field.
    """
    if auth.token_env and os.environ.get(auth.token_env):
        return os.environ[auth.token_env]
    if auth.credentials_key:
        if auth.credentials_key not in credentials:
            raise ValueError(
                f"serve.auth.credentials_key {auth.credentials_key!r} is not in credentials.yml."
            )
        entry = credentials[auth.credentials_key]
        token = entry.get("token") if isinstance(entry, dict) else entry
        if not token:
            raise ValueError(f"credentials.{auth.credentials_key} holds no token.")
        return str(token)
    return None
