"""One switch for the value-reading input checks of the losses.

A check such as "no NaN in the logits" or "the batch has answer tokens" reads a tensor's
value, which on a GPU waits for the device to catch up. The checks run by default, so a
loss called on its own names a bad input. The training engine turns them off on its hot
path (`train.debug_checks: false`, the default) and checks instead that every value it
logs is finite; `train.debug_checks: true` runs them on every micro-batch again.

    with debug_checks(False):
        out = loss(student_outputs, teacher_signals)  # no wait on the device
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

_CHECKS = contextvars.ContextVar("distill_debug_checks", default=True)


def checks_enabled() -> bool:
    """Whether value-reading input checks run here (see `debug_checks`)."""
    return _CHECKS.get()


@contextlib.contextmanager
def debug_checks(enabled: bool) -> Iterator[None]:
    """Run (True) or skip (False) the value-reading input checks inside this block."""
    token = _CHECKS.set(bool(enabled))
    try:
        yield
    finally:
        _CHECKS.reset(token)


__all__ = ["checks_enabled", "debug_checks"]
