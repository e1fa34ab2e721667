"""The one base class of user errors: bad input, not a bug.

A missing or corrupt file, a config that does not fit, an unreadable clip. The CLI prints
such an error as one line, `distill: error: ...`, and exits with status 2. Any other
exception is a bug and keeps its traceback. Each error subclasses `DistillError` and the
builtin it always was (`ValueError`, `RuntimeError`, ...), so existing `except` clauses
still catch it.
"""

from __future__ import annotations


class DistillError(Exception):
    """Bad input from the user; the message names the file, field or key at fault."""
