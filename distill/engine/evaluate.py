"""`Recipe.evaluate()`: one protocol for the trained student and for its teacher.

Writes OUTPUT/eval/{metrics.json, predictions.csv, predictions.jsonl} for the student
and OUTPUT/teacher/eval/... for the teacher (when it is a model, not a cache), so that
`Recipe.report()` can set them side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from distill._instantiate import instantiate


def evaluate_one(model, out_dir: Path, *, name: str, role: str, recipe, model_dir=None) -> dict:
    """Accuracy on `data.test` plus the configured efficiency protocols for one model.

    The teacher decodes with `eval.decode_settings("teacher")`, any other role with the
    student's; metrics.json records them under "decoding".
    """
    from distill.eval.efficiency import run_protocols
    from distill.eval.io import read_test_items
    from distill.eval.runner import evaluate_model, write_outputs

    e, progress = recipe.eval, recipe.train.progress
    model.eval()
    efficiency = run_protocols(
        model, e.efficiency, warmup=e.warmup, runs=e.iters, progress=progress
    )
    result = None
    if recipe.data.test:
        result = evaluate_model(
            model,
            read_test_items(recipe.data.test),
            decode=e.decode_settings("teacher" if role == "teacher" else "student"),
            batch_size=e.batch_size,
            progress=progress,
        )
    return write_outputs(
        out_dir, model=model, name=name, role=role, result=result, efficiency=efficiency,
        model_dir=model_dir, extra={"test_file": recipe.data.test, "seed": recipe.seed},
    )  # fmt: skip


def evaluate_recipe(recipe, include_teacher: bool | None = None) -> dict[str, Any]:
    """Evaluate OUTPUT/model (the trained student) and, if asked, the teacher."""
    from distill.engine.data import resolve_synth
    from distill.modeling.audio_llm import AudioLLM

    resolve_synth(recipe)
    out = Path(recipe.output_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model_dir = out / "model"
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} holds no trained student: run recipe.fit() first")
    student = AudioLLM.from_pretrained(model_dir, device=device)
    role = "student" if recipe.teacher else "baseline"
    results = {
        role: evaluate_one(
            student, out / "eval", name=recipe.name, role=role, recipe=recipe, model_dir=model_dir
        )
    }
    del student
    include_teacher = recipe.eval.evaluate_teacher if include_teacher is None else include_teacher
    if include_teacher and recipe.teacher:
        teacher = instantiate(recipe.teacher, config_key="teacher")
        model = getattr(teacher, "model", None)
        if model is None:
            print(
                f"teacher {recipe.teacher.get('_component_')} holds no model (a cache?); not evaluated"
            )
        else:
            model.to(device)
            name = f"{recipe.name}-teacher"
            results["teacher"] = evaluate_one(
                model, out / "teacher" / "eval", name=name, role="teacher", recipe=recipe,
                model_dir=getattr(teacher, "path", None),
            )  # fmt: skip
    return results
