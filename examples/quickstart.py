"""Quick start: the demo's whole job through the `Recipe` API, small enough for a laptop.

    python examples/quickstart.py [OUT_DIR]

1. data and foundation models: a synthetic corpus, two tokenizers, a CTC-pretrained Whisper
   encoder, a CED tagger and two text-pretrained LMs, saved in their own formats;
2. the teacher: SALMONN's recipe over them (frozen encoders; Q-Former, projection, LoRA);
3. its pseudo-labels for the clips the students have no label for;
4. a distilled student and a CE-only student, then the student-versus-teacher report.

`distill demo` runs the same at full size; `--quick` sizes are used here.
"""

import sys
from pathlib import Path

from distill.demo import DemoConfig, add_pseudo_labels, prepare, student_recipe, teacher
from distill.report import write_report


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "quickstart_run")
    cfg = DemoConfig.quick(out_dir=str(out), progress=False)
    world = prepare(cfg)
    recipes = {"teacher": teacher(world)}
    recipes["teacher"].fit()
    recipes["teacher"].evaluate()
    world = add_pseudo_labels(world)  # the students see half of the labels (quick setting)
    recipes["student_ce"] = student_recipe(world, "ce_only", seed=0)
    recipes["student_kd"] = student_recipe(world, "seqkd", seed=0)
    for name in ("student_ce", "student_kd"):
        summary = recipes[name].fit()
        results = recipes[name].evaluate(include_teacher=False)
        print(name, "final loss", round(summary["last"]["loss"], 3), "->", list(results))

    report = write_report(
        [recipes[n].output_dir for n in ("teacher", "student_ce", "student_kd")],
        out / "report",
        teacher="teacher",
        baseline=Path(recipes["student_ce"].output_dir).name,
    )
    print((report / "report.md").read_text()[:1500])
    print("report:", report / "report.html")


if __name__ == "__main__":  # the demo runs independent stages in spawned processes
    main()
