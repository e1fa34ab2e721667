"""`distill.demo._parallel.run_parallel`: order, results, and the serial fallback."""

import multiprocessing as mp
import os
import time

import pytest

from distill.demo._parallel import executor, run_parallel


def _square_with_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def _dies_in_a_worker(x: int) -> int:
    if mp.parent_process() is not None:
        os._exit(3)  # a worker that cannot run (as an unguarded script's would)
    return x + 1


def test_results_come_back_in_call_order_from_other_processes():
    out = run_parallel(_square_with_pid, [(3,), (1,), (2,)], jobs=2)
    assert [v for v, _ in out] == [9, 1, 4]
    assert all(pid != os.getpid() for _, pid in out)


def test_one_job_runs_here():
    out = run_parallel(_square_with_pid, [(3,), (4,)], jobs=1)
    assert out == [(9, os.getpid()), (16, os.getpid())]


def test_dead_workers_fall_back_to_serial_with_a_warning():
    with pytest.warns(RuntimeWarning, match="one at a time"):
        out = run_parallel(_dies_in_a_worker, [(1,), (2,), (3,)], jobs=2)
    assert out == [2, 3, 4]


def _slow_square_with_pid(x: int) -> tuple[int, int]:
    time.sleep(0.3)  # long enough that every worker of a pool takes a call
    return x * x, os.getpid()


def test_an_open_pool_runs_later_calls_on_the_same_workers():
    with executor(2) as pool:
        first = run_parallel(_slow_square_with_pid, [(1,), (2,)], jobs=2, pool=pool)
        second = run_parallel(_slow_square_with_pid, [(3,), (4,), (5,)], jobs=2, pool=pool)
    assert [v for v, _ in second] == [9, 16, 25]
    pids = {pid for _, pid in first + second}
    assert os.getpid() not in pids
    assert len(pids) <= 2  # fresh pools would have spawned 2 workers each


def test_an_inline_pool_runs_here():
    with executor(1) as pool:
        out = run_parallel(_square_with_pid, [(3,), (4,)], jobs=2, pool=pool)
    assert out == [(9, os.getpid()), (16, os.getpid())]
