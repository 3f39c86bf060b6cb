"""The package's own errors: a problem with the input or the machine that its message explains,
fix included. The command line prints these in one line (``python -m pgd: error: ...``); any
other exception (torch's own ``RuntimeError``, a bug) keeps its traceback."""

from __future__ import annotations


class PgdError(RuntimeError):
    """A problem with the input, the data or the machine, with the fix in the message."""
