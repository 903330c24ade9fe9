"""``UserError`` and the one-line report of a failed command.

A ``UserError`` is a failure the user caused and can fix (configuration, input data, a name): its
message is one line that names the file, row, field or parameter and says what to change.
``kedro run`` (the project's ``run`` in :mod:`taoflow.cli`) prints only that line for any failure
and writes the full traceback to a log file whose path it prints; ``TAOFLOW_TRACEBACK=1`` shows the
traceback instead. Why here and not ``sys.excepthook``: Kedro's logging setup installs rich's
traceback hook over any earlier one, so the report is made where the command itself fails.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path

VERBOSE_ENV = "TAOFLOW_TRACEBACK"


class UserError(Exception):
    """A user-caused error whose message (one line) is all a user needs to see."""


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or (None if err.__suppress_context__ else err.__context__)


def _user_caused(err: BaseException) -> BaseException | None:
    """The exception in ``err``'s chain that a user caused, if any (ours or a known library's)."""
    from kedro.config import MissingConfigException
    from kedro.io import DatasetError

    for link in _chain(err):
        if isinstance(link, UserError):
            return link
    for link in _chain(err):
        if isinstance(link, FileNotFoundError | MissingConfigException | DatasetError):
            return link
        if isinstance(link, ValueError) and "pipeline" in str(link) and "find" in str(link):
            return link  # kedro: "Failed to find the pipeline named ..."
    return None


def one_line(text: str) -> str:
    """A message folded onto one line (Kedro's wrappers add a line per layer)."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def write_traceback(err: BaseException, log_dir: str | Path = "logs") -> Path:
    """The full traceback in ``log_dir`` (a temp dir when that is not writable); its path."""
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    name = f"taoflow-error-{dt.datetime.now():%Y%m%d-%H%M%S-%f}-{os.getpid()}.log"
    for folder in (Path(log_dir), Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text, encoding="utf-8")
            return folder / name
        except OSError:
            continue
    raise OSError("no writable folder for the traceback")


def failure_report(err: BaseException, log_dir: str | Path = "logs") -> tuple[str, int]:
    """``(line, exit code)`` for a failed command: the user's error and where the traceback is.

    Exit code 2 for a user-caused error, 1 for anything else (a bug: the line says so).
    """
    try:
        where = f"traceback: {write_traceback(err, log_dir)}"
    except OSError:
        where = f"set {VERBOSE_ENV}=1 for the traceback"
    cause = _user_caused(err)
    if cause is not None:
        return f"Error: {one_line(cause)} ({where})", 2
    message = one_line(err) or "(no message)"
    return f"Error: unexpected {type(err).__name__}: {message} ({where}; please report it)", 1


def verbose() -> bool:
    """Whether the user asked for full tracebacks."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


__all__ = ["UserError", "failure_report", "one_line", "verbose", "write_traceback"]
