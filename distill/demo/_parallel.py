"""Independent demo runs side by side, in spawned processes, with a serial fallback."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any


@contextlib.contextmanager
def pinned_threads(n: int) -> Iterator[None]:
    """Run the block with `n` torch threads (so its numbers do not depend on the machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_parallel(
    fn: Callable[..., Any], calls: Sequence[tuple], jobs: int, pool: Any = None
) -> list[Any]:
    """`[fn(*args) for args in calls]`, `jobs` at a time in spawned processes.

    `fn` must be a module-level function and its arguments picklable. `pool`, an open
    `executor(jobs)`, runs the calls on its (already started) workers instead of new ones.
    When the worker processes cannot start or die (for instance a script that calls the
    demo at import time, without `if __name__ == "__main__":`, which every spawned process
    re-runs), the calls that did not finish run here, one at a time, after a warning that
    says why.
    """
    if jobs <= 1 or len(calls) <= 1 or isinstance(pool, _Inline):
        return [fn(*args) for args in calls]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    results: dict[int, Any] = {}
    try:
        with contextlib.ExitStack() as stack:
            if pool is None:
                pool = stack.enter_context(
                    ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"))
                )
            futures = [pool.submit(fn, *args) for args in calls]
            for i, f in enumerate(futures):
                results[i] = f.result()
    except BrokenProcessPool:
        warnings.warn(
            f"distill demo: worker processes died before {len(calls) - len(results)} of "
            f"{len(calls)} runs finished (a script without `if __name__ == '__main__':`, or "
            "out of memory?); running them here, one at a time",
            RuntimeWarning,
            stacklevel=2,
        )
    return [results[i] if i in results else fn(*args) for i, args in enumerate(calls)]


class _Inline:
    """An executor that runs each call at `submit` (one job: no processes to spawn)."""

    def submit(self, fn: Callable[..., Any], *args: Any):
        from concurrent.futures import Future

        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as err:  # delivered by .result(), as a pool would
            future.set_exception(err)
        return future


@contextlib.contextmanager
def executor(jobs: int) -> Iterator[Any]:
    """`jobs` spawned worker processes (a `ProcessPoolExecutor`), or inline calls for 1.

    For pipelines whose stages depend on each other (submit, then `.result()` where a later
    stage needs it); the caller may work in this process meanwhile.
    """
    if jobs <= 1:
        yield _Inline()
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        yield pool
