"""`distill bench train`: step-time ratios of the training engine, measured side by side.

Prints, from one run on the same data and models:
    kd_cache / ce           KD step with a `CachedTeacher` over a CE-only step   (goal <= 1.15)
    kd_live / (teacher + ce) live-teacher KD step over teacher forward + CE step (goal <= 1.05)
    loader / demand         data-loader batches per second over training steps per second
                            (goal >= 3: the GPU/CPU step, not audio decoding, is the bottleneck)
    host syncs per step     value-reading calls (`item`, `float(t)`, `tolist`, ...) in one
                            optimizer step outside logging steps, CE-only and KD-from-cache
                            (goal 0; see `distill.engine.syncs`); the note gives a logging
                            step's count, where the record is fetched in one go

Defaults use the tiny presets on a small synthetic corpus (offline, CPU, about a minute);
`--student`/`--teacher` take any preset names. Times are medians over `--steps` steps
after `--warmup` steps, with the batches fetched before timing (the loader is timed apart).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _median_time(fn, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _syncs_per_step(trainer, fetch: bool):
    """Host syncs of one more optimizer step of `trainer` (a fresh batch, after warm-up);
    `fetch`: a logging step, which reads its metrics back."""
    from distill.engine.syncs import count_host_syncs

    batch = trainer.stream.next(20_000 + trainer.step)
    with count_host_syncs() as counter:
        trainer.train_step([batch], fetch=fetch)
    return counter


def _recipe(work: Path, corpus: dict, args, loss: dict, teacher: dict | None):
    from distill.recipe import Recipe

    return Recipe.from_dict(
        {
            "name": "bench",
            "output_dir": str(work / "run"),
            "student": {
                "_component_": "distill.presets.build_model",
                "preset": args.student,
                "seed": 0,
            },
            "teacher": teacher,
            "loss": loss,
            "data": {
                "train": [corpus["train"]],
                "batch_size": args.batch_size,
                "num_workers": args.workers,
                "trim_fraction": 0.0,
            },
            "optim": {"max_steps": 10_000, "warmup_steps": 10},
            "train": {"trackers": [], "progress": False, "resume": "never"},
        }
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="distill bench train", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--student", default="tiny-student")
    parser.add_argument("--teacher", default="tiny-teacher")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--topk", type=int, default=32)
    parser.add_argument("--work", default=None, help="scratch dir (default: a temp dir)")
    args = parser.parse_args(argv)

    from distill._instantiate import instantiate
    from distill.cache import build_cache
    from distill.data import read_annotations
    from distill.data.synth import make_corpus
    from distill.engine.trainer import Trainer

    work = Path(args.work or tempfile.mkdtemp(prefix="distill-bench-"))
    n = args.batch_size * (args.steps + args.warmup + 2)
    corpus = make_corpus(
        work / "data", seed=0, n_speech=n, n_sounds=max(8, n // 4), splits=(0.9, 0.05, 0.05)
    )
    live_node = {
        "_component_": "teachers.AudioLLMTeacher",
        "model": {"_component_": "distill.presets.build_model", "preset": args.teacher, "seed": 1},
        "topk": args.topk,
    }
    teacher = instantiate(live_node)
    cache_dir = work / "cache"
    if not (cache_dir / "index.json").is_file():
        build_cache(teacher, read_annotations(corpus["train"]), cache_dir, topk=args.topk,
                    batch_size=args.batch_size, shard_size=args.batch_size * 8, progress=False)  # fmt: skip
    kd = {"_component_": "losses.DDAT", "kd": {"_component_": "losses.TokenKL", "temperature": 2.0}}
    ce = {"_component_": "losses.CE"}
    cached_node = {"_component_": "teachers.CachedTeacher", "cache_dir": str(cache_dir)}

    def step_time(loss, teacher_node) -> tuple[float, Trainer]:
        trainer = Trainer(_recipe(work, corpus, args, loss, teacher_node))
        batches = [trainer.stream.next(i) for i in range(args.warmup + args.steps)]
        it = iter(batches)
        return _median_time(
            lambda: trainer.train_step([next(it)]), args.warmup, args.steps
        ), trainer

    t_ce, trainer = step_time(ce, None)
    t_cache, cached = step_time(kd, cached_node)
    syncs = {name: (_syncs_per_step(t, False), _syncs_per_step(t, True)) for name, t in
             (("CE", trainer), ("KD-cache", cached))}  # fmt: skip
    t_live, live = step_time(kd, live_node)
    batches = [live.stream.next(i) for i in range(args.warmup + args.steps)]
    it = iter(batches)
    with torch.no_grad():
        t_teacher = _median_time(lambda: live.teacher.signals(next(it)), args.warmup, args.steps)
    stream = trainer.stream
    n_load = args.warmup + 3 * args.steps
    t0 = time.perf_counter()
    for i in range(n_load):
        stream.next(10_000 + i)
    loader_rate = n_load / (time.perf_counter() - t0)
    demand = 1.0 / t_cache
    rows = [
        ("CE-only step", f"{t_ce * 1e3:.1f} ms", ""),
        ("KD step, cached teacher", f"{t_cache * 1e3:.1f} ms", ""),
        ("KD step, live teacher", f"{t_live * 1e3:.1f} ms", ""),
        ("teacher forward alone", f"{t_teacher * 1e3:.1f} ms", ""),
        ("kd_cache / ce", f"{t_cache / t_ce:.3f}", "goal <= 1.15"),
        ("kd_live / (teacher + ce)", f"{t_live / (t_teacher + t_ce):.3f}", "goal <= 1.05"),
        *[
            (
                f"host syncs per step, {name}",
                f"{n.total}",
                "goal 0"
                + "".join(f", {k} {v}" for k, v in sorted(n.by_kind.items()))
                + f" (a logging step: {at_log.total})",
            )
            for name, (n, at_log) in syncs.items()
        ],  # fmt: skip
        (
            "loader / demand",
            f"{loader_rate / demand:.2f}",
            f"goal >= 3 ({loader_rate:.1f} batches/s, {args.workers} workers)",
        ),
    ]
    print(f"distill bench train: student={args.student} teacher={args.teacher} batch={args.batch_size} "
          f"top-k={args.topk} device=cpu threads={torch.get_num_threads()}")  # fmt: skip
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"  {name:<{width}}  {value:>10}  {note}")
    return 0
