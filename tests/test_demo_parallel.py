"""`distill.demo._parallel`: `run_parallel`'s order, results and serial fallback; `data_parallel`'s
process group and its failures."""

import multiprocessing as mp
import os
import time

import pytest

from distill.demo._parallel import data_parallel, executor, run_parallel


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


def _reduce_ranks(out_dir: str) -> None:
    """Each process: what Accelerate sees, and a sum over the processes, written to a file."""
    import json
    from pathlib import Path

    import torch
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    total = acc.reduce(torch.tensor(float(acc.process_index + 1)), "sum")
    Path(out_dir, f"rank{acc.process_index}.json").write_text(json.dumps({
        "processes": acc.num_processes, "distributed": str(acc.distributed_type),
        "sum": float(total), "threads": torch.get_num_threads(), "pid": os.getpid(),
    }))  # fmt: skip


def test_data_parallel_processes_form_one_accelerate_world(tmp_path):
    import json

    data_parallel(_reduce_ranks, (str(tmp_path),), processes=2, threads=1)
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank in seen:
        assert rank["processes"] == 2 and rank["distributed"].endswith("MULTI_CPU")
        assert rank["sum"] == 3.0  # 1 + 2: the reduce crossed the processes
        assert rank["threads"] == 1
    assert len({os.getpid(), *(r["pid"] for r in seen)}) == 3


def _rank1_fails(_: int) -> None:
    import torch.distributed as dist
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    if acc.process_index == 1:
        raise ValueError("rank 1 broke")
    dist.barrier()  # would wait for rank 1 forever


def test_a_failed_process_stops_the_others_and_is_named():
    t = time.perf_counter()
    with pytest.raises(RuntimeError, match="process 1 of 2 failed first: ValueError: rank 1 broke"):
        data_parallel(_rank1_fails, (0,), processes=2)
    assert time.perf_counter() - t < 120  # rank 0 did not hang in its barrier


def test_teacher_processes_must_divide_the_batch():
    from distill._instantiate import ConfigError
    from distill.demo.config import DemoConfig

    with pytest.raises(ConfigError, match="teacher_processes must be >= 1 and divide batch_size"):
        DemoConfig(batch_size=16, teacher_processes=3)
    assert DemoConfig(batch_size=16, teacher_processes=4).teacher_processes == 4
