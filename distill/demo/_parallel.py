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


def data_parallel(fn: Callable[..., Any], args: tuple, processes: int, threads: int = 1) -> None:
    """`fn(*args)` in `processes` spawned processes that form one torch.distributed world.

    What `accelerate launch --multi_gpu --num_processes N` sets up, on this machine: see
    `ProcessGroup`, which starts the processes ahead of the work.
    """
    with ProcessGroup(processes, threads) as group:
        group.run(fn, args)


class ProcessGroup:
    """`processes` spawned processes that will form one torch.distributed world.

    Started at construction: each process gets RANK, LOCAL_RANK, WORLD_SIZE,
    LOCAL_WORLD_SIZE, MASTER_ADDR, a free MASTER_PORT and `threads` torch threads, imports
    torch, Accelerate and the model code, then waits. `run(fn, args)` has every process call
    `fn(*args)` once, so an Accelerator built in `fn` trains data-parallel (DDP; gloo
    without CUDA), and returns when all have finished. Starting the group while other work
    finishes hides the processes' start-up. `fn` must be module-level and `args`
    picklable; its effects (a trained run directory) are what the caller reads. When one
    process fails, the others are stopped (they would wait in a collective forever) and
    RuntimeError says which one failed first, and with what error; its traceback is on
    stderr. Closing the group without `run` lets the processes exit.
    """

    def __init__(self, processes: int, threads: int = 1):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        port = _free_port()
        self.processes = processes
        self._conns: list[Any] = []
        self._procs: list[Any] = []
        try:
            for rank in range(processes):
                here, there = ctx.Pipe()
                proc = ctx.Process(target=_rank_main, args=(there, rank, processes, port, threads),
                                   name=f"distill-rank{rank}")  # fmt: skip
                proc.start()
                there.close()
                self._conns.append(here)
                self._procs.append(proc)
        except BaseException:
            self.close()
            raise

    def run(self, fn: Callable[..., Any], args: tuple) -> None:
        import multiprocessing.connection as connection

        for conn in self._conns:
            conn.send((fn, args))
        alive = list(self._procs)
        while alive:
            connection.wait([p.sentinel for p in alive])
            for p in [p for p in alive if not p.is_alive()]:
                p.join()
                alive.remove(p)
                if p.exitcode != 0:
                    self._fail(fn, p)

    def _fail(self, fn: Callable[..., Any], seen: Any) -> None:
        """Stop the group and say which process failed first (a rank whose peer died fails
        too, in its next collective, so the first exit seen need not be the cause)."""
        for p in self._procs:
            p.join(timeout=5)
        reports = []  # (time, rank, error) as each failed process sent it
        for rank, conn in enumerate(self._conns):
            try:
                while conn.poll():
                    message = conn.recv()
                    if isinstance(message, tuple) and message[:1] == ("failed",):
                        reports.append((message[1], rank, message[2]))
            except (EOFError, OSError):
                pass
        self.close()
        name = getattr(fn, "__name__", fn)
        if reports:
            _, rank, error = min(reports)
            others = [f"process {r}: {e}" for _, r, e in sorted(reports) if r != rank]
            cause = f"process {rank} of {self.processes} failed first: {error}"
            if others:
                cause += f" (then {'; '.join(others)})"
        else:
            rank = self._procs.index(seen)
            cause = f"process {rank} of {self.processes} exited with code {seen.exitcode}"
        raise RuntimeError(
            f"{name}: {cause}. Its traceback is above; the other processes were stopped. "
            "(A script that starts the demo without `if __name__ == '__main__':` cannot "
            "spawn processes.)"
        )

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send(None)  # a process still waiting for work exits
            except (BrokenPipeError, OSError):
                pass
            conn.close()
        self._conns = []
        for p in self._procs:
            p.join(timeout=5)
            if p.is_alive():  # still at work (run failed elsewhere): stop it
                p.terminate()
                p.join()

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(conn: Any, rank: int, world: int, port: int, threads: int) -> None:
    import os

    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
        OMP_NUM_THREADS=str(threads),
    )  # fmt: skip
    import torch

    torch.set_num_threads(threads)
    _warm()
    try:
        job = conn.recv()
    except EOFError:  # the parent is gone
        return
    if job is None:
        return
    fn, args = job
    try:
        fn(*args)
    except BaseException as err:
        import time

        try:  # for the parent: which process failed first, and with what
            conn.send(("failed", time.time(), f"{type(err).__name__}: {err}"[:500]))
        except (BrokenPipeError, OSError):
            pass
        raise
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _warm() -> None:
    """Import what every demo job needs (a new process's first seconds), then return."""
    import accelerate  # noqa: F401
    import peft  # noqa: F401
    import transformers  # noqa: F401

    import distill.modeling.audio_llm  # noqa: F401


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
        for _ in range(jobs):  # start the workers and their imports now, not at first use
            pool.submit(_warm)
        yield pool
