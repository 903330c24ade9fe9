"""``UserError``: a failure the user caused and can fix (configuration, input data, a name).

Its message is one line, fit to print as it is: it names the file, row, field or parameter and
says what to change. ``kedro run`` (see :mod:`taoflow.cli`) prints only that line for it and keeps
the traceback in a log file; any other exception is a bug and is reported the same way, with a
note saying so.
"""

from __future__ import annotations


class UserError(Exception):
    """A user-caused error whose message (one line) is all a user needs to see."""


__all__ = ["UserError"]
