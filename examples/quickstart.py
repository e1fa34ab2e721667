"""Quick start: the demo's whole job through the `Recipe` API, small enough for a laptop.

    python examples/quickstart.py [OUT_DIR]

1. a synthetic corpus with known answers and two tokenizers trained on it;
2. three recipes: a tiny teacher (CE + CTC aid), a student distilled from it (DDAT over
   cross-tokenizer token KL + feature MSE) and a CE-only student (same aids, no teacher);
3. `recipe.fit()` and `recipe.evaluate()` for each, then the student-versus-teacher report.

`distill demo` runs the same at full size; `--quick` sizes are used here.
"""

import sys
from pathlib import Path

from distill import Recipe
from distill.demo import DemoConfig, plan, prepare
from distill.report import write_report

out = Path(sys.argv[1] if len(sys.argv) > 1 else "quickstart_run")
cfg = DemoConfig.quick(out_dir=str(out), progress=False)
corpus, tokenizers = prepare(cfg)
recipes: dict[str, Recipe] = plan(cfg, corpus, tokenizers)

for name, recipe in recipes.items():  # the teacher first: the distilled student loads it
    summary = recipe.fit()
    results = recipe.evaluate()
    print(name, "final loss", round(summary["last"]["loss"], 3), "->", list(results))

report = write_report(
    [recipes[n].output_dir for n in ("teacher", "student_ce", "student_kd")],
    out / "report",
    teacher="teacher",
    baseline="student_ce",
)
print((report / "report.md").read_text()[:1500])
print("report:", report / "report.html")
