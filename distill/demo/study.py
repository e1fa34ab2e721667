"""`distill study`: every arm over several seeds, with paired bootstrap CIs against CE-only.

    distill study                        # label-scarce and equal-labels settings, test split
    distill study --split valid          # the same on the valid split (for choosing settings)
    distill study --quick                # seconds-sized smoke run (the test suite runs it)

The arms (`arms.py`) share one world (`world.py`: corpus, foundation, teacher, pseudo-labels)
and train for the same steps on the same batches sizes; only the loss and, for distillation
arms, the pseudo-labelled clips differ. Per setting, `distill.study_report` writes
study.{md,html,png,json}: mean ± std over seeds, per-seed and pooled 95 % CIs of the
difference from CE-only over test items, verdicts (a CI that includes 0 is a tie) and the
share of the CE-to-teacher gap closed. Finished runs are reused.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from distill.demo.arms import ARMS, BASELINE, BEST, STUDY_ARMS
from distill.demo.config import DemoConfig

SETTINGS = {"scarce": None, "equal": 1.0}  # None: the config's student_label_fraction
# the equal-labels setting is reported beside the label-scarce one for the best arm (with
# every label it has no pseudo-labels: CE plus the teacher's Q-Former features); seqkd would
# be CE-only there. `--equal-arms` widens it
EQUAL_ARMS = (BASELINE, BEST)


def run_study(
    cfg: DemoConfig,
    arms: tuple[str, ...] = STUDY_ARMS,
    settings: tuple[str, ...] = ("scarce", "equal"),
    split: str = "test",
    equal_arms: tuple[str, ...] = EQUAL_ARMS,
) -> dict[str, Path]:
    """Train and evaluate every arm x seed in each setting; return setting -> report dir."""
    from distill.demo._parallel import executor
    from distill.demo.world import build_world, run_students, teacher_eval_dir
    from distill.study_report import write_study_report

    if BASELINE not in arms:
        arms = (BASELINE, *arms)
    reports: dict[str, Path] = {}
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    with executor(cfg.jobs) as pool:  # the same workers for every stage and setting
        for setting in settings:
            fraction = SETTINGS[setting] or cfg.student_label_fraction
            world = build_world(replace(cfg, student_label_fraction=fraction), timings, pool)
            names = arms if setting == "scarce" else tuple(a for a in arms if a in equal_arms)
            order = (BASELINE, *[a for a in names if a != BASELINE])
            jobs = [(name, seed) for name in order for seed in cfg.student_seeds]
            paths = run_students(world, jobs, timings, split, pool)
            runs: dict[str, list[str]] = {name: [] for name in order}
            for (name, _), path in zip(jobs, paths):
                runs[name].append(str(path))
            out = Path(cfg.out_dir) / "study" / f"{split}-labels-{fraction:g}"
            reports[setting] = write_study_report(
                runs, out, baseline=BASELINE, teacher=str(teacher_eval_dir(world, split)),
                title=f"distill study: {len(runs)} arms x {len(cfg.student_seeds)} seeds ({split} split)",
                setting=world.setting,
            )  # fmt: skip
    timings["total_s"] = round(time.perf_counter() - t0, 1)
    (Path(cfg.out_dir) / "study" / f"timings-{split}.json").write_text(
        json.dumps(timings, indent=1) + "\n"
    )
    return reports


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from distill.demo import add_arguments as demo_arguments

    demo_arguments(parser)
    parser.set_defaults(out="distill_study")
    parser.add_argument("--arms", nargs="+", default=list(STUDY_ARMS), choices=list(ARMS),
                        help="arms to run (ce_only is always added)")  # fmt: skip
    parser.add_argument("--settings", nargs="+", default=["scarce", "equal"],
                        choices=list(SETTINGS), help="label-scarce and/or equal-labels")  # fmt: skip
    parser.add_argument("--equal-arms", nargs="+", default=list(EQUAL_ARMS), choices=list(ARMS),
                        help="arms of the equal-labels setting")  # fmt: skip
    parser.add_argument("--split", default="test", choices=["test", "valid"],
                        help="where to score the arms: tune on valid, report test once")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from distill.demo import config_from_args

    if not args.student_seeds:
        args.student_seeds = [0, 1] if args.quick else [0, 1, 2]
    cfg = config_from_args(args)
    reports = run_study(cfg, tuple(args.arms), tuple(args.settings), args.split,
                        tuple(args.equal_arms))  # fmt: skip
    for setting, path in reports.items():
        print(f"{setting}: {path / 'study.md'} and {path / 'study.html'}")
    return 0
