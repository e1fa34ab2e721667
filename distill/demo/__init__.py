"""`distill demo`: the library's whole job, offline, on a laptop CPU, built like a real run.

1. Data (`corpus.py`): espeak-ng speech and procedural sounds with known answers, two
   BPE tokenizers, and the labelled subset the students may see.
2. Foundation (`foundation.py`): a Whisper encoder pretrained with CTC, a CED encoder
   pretrained to tag the sounds, and two causal LMs text-pretrained on the corpus texts,
   each saved in its ecosystem's format and loaded back through `whisper_path`,
   `audio_encoder_path` and `llm_path`, the fields a released checkpoint uses.
3. Teacher and students (`stages.py`, `world.py`): the SALMONN recipe over those parts
   (frozen encoders; Q-Former, projection and LoRA train). The teacher pseudo-labels the
   clips the students have no label for. Over several seeds, a distilled student
   (`arms.BEST`: CE on labels and the teacher's pseudo-labels, plus a contrastive term
   that makes each student Q-Former window pick out the teacher's window of the same
   clip and time) and a CE-only student (the labelled subset) train for the same steps,
   side by side (`DemoConfig.jobs`).
4. Report: the student-versus-teacher report of seed 0, and the seed table with mean ± std,
   paired bootstrap 95 % CIs over test items, verdicts and the share of the gap closed.

`distill study` (`study.py`) runs every arm (the seed team's four KD attempts among them)
over the same world. Finished stages are reused on a second run; `--fresh` redoes them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from distill.demo.arms import BASELINE, BEST
from distill.demo.config import DemoConfig

__all__ = [
    "DemoConfig",
    "run_demo",
    "add_arguments",
    "run",
    "summarize",
    "figures_table",
    "prepare",
    "teacher",
    "add_pseudo_labels",
    "student_recipe",
]


def __getattr__(name: str):
    # the notebook's API (`distill.demo.prepare`, ...) without importing torch for `--help`
    if name in ("prepare", "teacher", "add_pseudo_labels", "student_recipe"):
        from distill.demo import world

        return getattr(world, name)
    raise AttributeError(name)


def run_demo(cfg: DemoConfig, fresh: bool = False) -> Path:
    """Run every stage (reusing finished ones); return the report directory."""
    from distill.demo._parallel import executor
    from distill.demo.world import build_world, run_students
    from distill.report import write_report
    from distill.study_report import write_study_report

    out = Path(cfg.out_dir)
    if fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    jobs = [(name, seed) for seed in cfg.student_seeds for name in (BASELINE, BEST)]
    with executor(cfg.jobs) as pool:  # one set of workers for the world and the students
        world = build_world(cfg, timings, pool)
        paths = run_students(world, jobs, timings, pool=pool)
    runs: dict[str, list[Path]] = {BASELINE: [], BEST: []}
    for (name, _), path in zip(jobs, paths):
        runs[name].append(path)
    report = write_report(
        [world.teacher_dir, runs[BASELINE][0], runs[BEST][0]],
        out / "report",
        teacher="teacher",
        baseline=runs[BASELINE][0].name,
        title=f"distill demo: teacher, distilled and CE-only students ({world.setting}, seed "
        f"{cfg.student_seeds[0]})",
    )
    write_study_report(
        {k: [str(p) for p in v] for k, v in runs.items()}, out / "report" / "seeds",
        baseline=BASELINE, teacher=str(world.teacher_dir),
        title="distill demo: distilled vs CE-only student over seeds", setting=world.setting,
    )  # fmt: skip
    timings["total_s"] = round(time.perf_counter() - t0, 1)
    summary = summarize(world, out / "report" / "seeds" / "study.json", timings)
    (out / "metrics.json").write_text(json.dumps(summary, indent=1) + "\n")
    return report


def summarize(world, study_json: Path, timings: dict) -> dict:
    """The demo's headline figures (what the README quotes), from the seed table."""
    study = json.loads(study_json.read_text())
    teacher = json.loads((world.teacher_dir / "eval" / "metrics.json").read_text())
    return {
        "schema": "distill.demo/2",
        "setting": world.setting,
        "student_label_fraction": world.cfg.student_label_fraction,
        "seeds": list(world.cfg.student_seeds),
        "teacher": {
            "wer_percent": teacher["accuracy"]["asr"]["wer_percent"],
            "cider_d": teacher["accuracy"].get("audiocaption_v2", {}).get("cider_d"),
            "params_total": teacher["model"]["params_total"],
        },
        "study": study,
        "timings_s": timings,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        default="distill_demo",
        help="output directory: finished stages are reused; one built with other settings "
        "is refused (see --fresh)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="world seed: corpus, foundation, teacher"
    )
    parser.add_argument(
        "--student-seeds",
        type=int,
        nargs="+",
        default=None,
        help="student seeds (demo default 0; study default 0 1 2)",
    )
    parser.add_argument(
        "--label-fraction", type=float, default=None,
        help="share of train labels the students see (default 0.1; 1 = equal labels)",
    )  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes and steps (tests, smoke runs)"
    )
    parser.add_argument(
        "--fresh", action="store_true", help="delete --out first and redo every stage"
    )
    parser.add_argument("--teacher-steps", type=int, default=None)
    parser.add_argument("--student-steps", type=int, default=None)
    parser.add_argument("--jobs", type=int, default=None,
                        help="student runs side by side, 1 torch thread each (default 2)")  # fmt: skip
    parser.add_argument(
        "--teacher-processes", type=int, default=None,
        help="data-parallel processes of the teacher's training (default 2; 1 = one process)",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true")


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    kw = {"out_dir": args.out, "seed": args.seed, "progress": not args.no_progress}
    if args.student_seeds:
        kw["student_seeds"] = tuple(args.student_seeds)
    if args.label_fraction is not None:
        kw["student_label_fraction"] = args.label_fraction
    for name in ("teacher_steps", "student_steps", "jobs", "teacher_processes"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    return DemoConfig.quick(**kw) if args.quick else DemoConfig(**kw)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    report = run_demo(cfg, fresh=args.fresh)
    summary = json.loads((Path(cfg.out_dir) / "metrics.json").read_text())
    for line in json.loads((report / "metrics.json").read_text()).get("verdicts", []):
        print(line)
    for row in _headline(summary):
        print(row)
    print(f"report: {report / 'report.md'} and {report / 'report.html'}")
    print(f"seeds:  {report / 'seeds' / 'study.md'}")
    return 0


def _headline(summary: dict) -> list[str]:
    return figures_table(summary)


def _metric(study: dict, key: str) -> dict | None:
    return next((m for m in study["metrics"] if m["key"] == key), None)


def figures_table(summary: dict) -> list[str]:
    """The README's demo table (markdown lines) from a demo's metrics.json.

    tests/test_demo.py checks that the README's table has exactly this form (header, row
    labels, cell shapes) for the metrics.json that `distill demo --quick` writes.
    """
    study = summary["study"]
    wer, cider = _metric(study, "asr/wer"), _metric(study, "audiocaption_v2/cider_d")
    n = len(summary["seeds"])
    head = ["model", f"WER % (mean ± std, {n} seeds)", f"CIDEr-D (mean ± std, {n} seeds)",
            "gap closed (WER / CIDEr-D)", "verdict vs CE-only, pooled 95 % CI (WER / CIDEr-D)",
            "seeds where it beats CE-only (WER / CIDEr-D)"]  # fmt: skip
    rows = [["teacher", f"{wer['teacher']:.1f}", f"{cider['teacher']:.3f}", "", "", ""]]
    for arm in study["arms"]:
        w, c = wer["arms"][arm], cider["arms"][arm]
        if arm == study["baseline"]:
            rows.append([arm, f"{w['mean']:.1f} ± {w['std']:.1f}", f"{c['mean']:.3f} ± {c['std']:.3f}",
                         "", "", ""])  # fmt: skip
            continue
        pw, pc = w["pooled"], c["pooled"]
        rows.append([
            arm,
            f"{w['mean']:.1f} ± {w['std']:.1f}",
            f"{c['mean']:.3f} ± {c['std']:.3f}",
            f"{_pct(w['gap_closed_mean'])} / {_pct(c['gap_closed_mean'])}",
            f"{pw['verdict']} [{pw['lo']:+.1f}, {pw['hi']:+.1f}] / "
            f"{pc['verdict']} [{pc['lo']:+.3f}, {pc['hi']:+.3f}]",
            f"{w['beats']}/{w['n_seeds']} / {c['beats']}/{c['n_seeds']}",
        ])  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f} %"
