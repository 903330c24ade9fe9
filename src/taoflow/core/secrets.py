"""Values that came from the environment are masked wherever configuration is logged.

Configuration may interpolate environment variables (``${oc.env:MLFLOW_TRACKING_URI}``), and such
a value can carry credentials (``https://user:token@host``, a database URL). Parameters and the
resolved configuration are logged to MLflow for provenance, so every value of a variable the
configuration references is replaced by :data:`MASK` there, wherever it appears in a string
(also inside a longer value another key interpolated it into). Values shorter than
:data:`MIN_SECRET_LENGTH` are left alone: masking ``1`` or ``true`` would garble unrelated values
and they cannot hold a credential.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

MASK = "***"
MIN_SECRET_LENGTH = 4
# Variables the shipped configuration reads that hold a name, never a credential: masking their
# value would garble every string that mentions it (``taoflow`` in tag keys and model names).
PUBLIC_ENV_VARS = frozenset({"TAOFLOW_EXPERIMENT"})
_ENV_REF = re.compile(r"\$\{\s*oc\.env\s*:\s*([A-Za-z_][A-Za-z0-9_]*)")


def referenced_env_vars(conf_source: str | Path) -> set[str]:
    """Names of the environment variables any YAML file under ``conf_source`` interpolates."""
    names: set[str] = set()
    root = Path(conf_source)
    files = [root] if root.is_file() else sorted([*root.rglob("*.yml"), *root.rglob("*.yaml")])
    for file in files:
        try:
            names.update(_ENV_REF.findall(file.read_text(encoding="utf-8", errors="replace")))
        except OSError:
            continue
    return names


def env_secrets(names: Iterable[str], environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The current values of ``names`` worth masking, longest first (not :data:`PUBLIC_ENV_VARS`)."""
    environ = os.environ if environ is None else environ
    values = {environ.get(n) or "" for n in names if n not in PUBLIC_ENV_VARS}
    return tuple(sorted((v for v in values if len(v) >= MIN_SECRET_LENGTH), key=len, reverse=True))


def mask_secrets(value: Any, secrets: Iterable[str]) -> Any:
    """``value`` with every occurrence of a secret in its strings replaced by :data:`MASK`."""
    secrets = tuple(secrets)
    if not secrets:
        return value
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, MASK)
        return value
    if isinstance(value, Mapping):
        return {mask_secrets(k, secrets): mask_secrets(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(mask_secrets(v, secrets) for v in value)
    return value
