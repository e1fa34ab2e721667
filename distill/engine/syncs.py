"""Count the host syncs a piece of code makes: the calls that wait for a tensor's value.

On a GPU each of them stalls the stream until the device catches up. On any device they are
the same Python calls, so counting them on CPU counts what a GPU run would wait for:

    with count_host_syncs() as counter:
        trainer.train_step(batches)
    counter.total, counter.by_kind  # e.g. 7, {"__float__": 5, "item": 2}

Counted: `Tensor.item`, `Tensor.tolist`, `float(t)`, `int(t)`, `bool(t)` (an `if t:` too)
and `Tensor.cpu()`/`.numpy()`. Not counted: calls made by `torch.optim` itself (Adam's
per-parameter step counters are CPU scalars, read without waiting for the device), and syncs
inside C++, which `torch.cuda.set_sync_debug_mode` shows on a GPU.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

KINDS = ("item", "tolist", "__float__", "__int__", "__bool__", "cpu", "numpy")
_lock = threading.Lock()


@dataclass
class SyncCounter:
    by_kind: Counter = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.by_kind.values())


@contextlib.contextmanager
def count_host_syncs() -> Iterator[SyncCounter]:
    """Count host syncs made in this block (all threads of this process)."""
    counter = SyncCounter()
    originals = {k: getattr(torch.Tensor, k) for k in KINDS}

    def wrap(kind, fn):
        def counted(self, *args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            free = (kind == "cpu" and self.device.type == "cpu") or caller.startswith("torch.optim")
            if not free:
                counter.by_kind[kind] += 1
            return fn(self, *args, **kwargs)

        return counted

    with _lock:
        for kind, fn in originals.items():
            setattr(torch.Tensor, kind, wrap(kind, fn))
        try:
            yield counter
        finally:
            for kind, fn in originals.items():
                setattr(torch.Tensor, kind, fn)


__all__ = ["KINDS", "SyncCounter", "count_host_syncs"]
