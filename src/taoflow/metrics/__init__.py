"""taoflow's Hugging Face ``evaluate`` metric modules, shipped in the package and loaded by path.

``evaluate.load("accuracy")`` fetches a script from the Hub; these load from the installed
package instead, so evaluation works offline and a metric's definition is versioned with the
code that reports it. Hub metrics (ROUGE, BLEU, …) go through :func:`load_metric` too, but only
when a user names them and is online.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent
BUILTIN = ("answer_accuracy", "pass_at_k", "maj_at_k")


def metric_path(name: str) -> Path:
    """Folder of a shipped metric module (``<name>/<name>.py``)."""
    if name not in BUILTIN:
        raise KeyError(f"no shipped metric {name!r}; shipped: {', '.join(BUILTIN)}")
    return METRICS_DIR / name


@cache
def load_metric(name: str):
    """A shipped metric by name (offline, by path), else a Hub metric by name (needs network).

    ``keep_in_memory`` keeps ``evaluate`` from writing Arrow caches under ``~/.cache``.
    """
    import evaluate

    path = str(metric_path(name)) if name in BUILTIN else name
    try:
        return evaluate.load(path, keep_in_memory=True)
    except Exception as error:  # noqa: BLE001 - re-raised with the reason a user needs
        if name in BUILTIN:
            raise
        raise RuntimeError(
            f"Hub metric {name!r} could not be loaded ({error}). Hub metrics need network "
            f"access (and HF_HUB_OFFLINE unset); shipped offline metrics: {', '.join(BUILTIN)}."
        ) from error


__all__ = ["BUILTIN", "load_metric", "metric_path"]
