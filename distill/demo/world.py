"""What every student of the demo and the study shares: data, foundation, teacher, pseudo-labels.

Built once per `DemoConfig.seed` (and label fraction) and reused by every later run.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

from distill.demo.arms import arm, with_aid
from distill.demo.config import DemoConfig
from distill.demo.corpus import make_data
from distill.demo.foundation import build_foundation
from distill.demo.stages import (
    audio_llm_config,
    ctc_aid,
    is_done,
    make_recipe,
    pseudo_label,
    teacher_recipe,
    train_and_evaluate,
)


@dataclass
class World:
    cfg: DemoConfig
    paths: dict[str, str]
    found: dict[str, str]
    teacher_dir: Path
    pseudo: str | None  # pseudo-labelled train clips (None in the equal-labels setting)

    @property
    def setting(self) -> str:
        f = self.cfg.student_label_fraction
        return "equal labels" if f >= 1.0 else f"label-scarce ({f:.0%} of the train labels)"

    @property
    def students_dir(self) -> Path:
        return Path(self.cfg.out_dir) / "students" / f"labels-{self.cfg.student_label_fraction:g}"


def prepare(cfg: DemoConfig, timings: dict[str, float] | None = None) -> World:
    """Corpus, tokenizers, label split and foundation models (pretrained and saved)."""
    timings = {} if timings is None else timings
    t = time.perf_counter()
    paths = make_data(cfg)
    timings["data_s"] = round(time.perf_counter() - t, 1)
    found = build_foundation(cfg, paths, timings)
    paths["features"] = frozen_features(cfg, paths, found, timings)
    return World(cfg, paths, found, Path(cfg.out_dir) / "teacher", None)


def frozen_features(
    cfg: DemoConfig, paths: dict[str, str], found: dict[str, str], timings: dict[str, float]
) -> str:
    """The frozen encoders' outputs for every train and valid clip, computed once.

    Teacher and students share the foundation's encoders, so one store file
    (`distill.engine.features`) serves the teacher's training, its pseudo-labels and every
    student of the demo and the study (`train.feature_store`).
    """
    from distill.engine.features import build_feature_store
    from distill.presets import build_model

    store = Path(cfg.out_dir) / "features"
    done = store / "done.json"
    if done.is_file():
        return str(store)
    t = time.perf_counter()
    model = build_model(config=audio_llm_config(cfg, found, "teacher"), seed=cfg.seed)
    out = build_feature_store(model, [paths["train"], paths["valid"]], store,
                              batch_size=64, progress=cfg.progress)  # fmt: skip
    done.write_text(json.dumps({"file": out.name}) + "\n")
    timings["features_s"] = round(time.perf_counter() - t, 1)
    return str(store)


def teacher(world: World):
    """The teacher's Recipe (SALMONN's recipe over the foundation parts)."""
    return teacher_recipe(world.cfg, world.paths, world.found)


def add_pseudo_labels(world: World, timings: dict[str, float] | None = None) -> World:
    """The trained teacher's answers for the clips the students have no label for."""
    if world.cfg.student_label_fraction >= 1.0:
        return world
    t = time.perf_counter()
    out = Path(world.paths["labelled"]).parent / "pseudo_labels.json"
    fresh = not out.is_file()
    world.pseudo = pseudo_label(
        world.cfg, world.teacher_dir, world.paths["unlabelled"], out, world.paths.get("features")
    )
    if fresh and timings is not None:
        timings["pseudo_labels_s"] = round(time.perf_counter() - t, 1)
    return world


def build_world(cfg: DemoConfig, timings: dict[str, float]) -> World:
    """`prepare`, then train and evaluate the teacher, then its pseudo-labels."""
    from distill.demo._parallel import pinned_threads

    with pinned_threads(cfg.world_threads):
        world = prepare(cfg, timings)
        train_and_evaluate(teacher(world), "teacher", timings)
        return add_pseudo_labels(world, timings)


def student_recipe(world: World, arm_name: str, seed: int):
    """The Recipe of one arm and seed (same steps, batch and lr for every arm)."""
    cfg = world.cfg
    student = audio_llm_config(cfg, world.found, "student")
    teacher = audio_llm_config(cfg, world.found, "teacher")
    a = arm(arm_name, student_q=student["qformer_hidden"], teacher_q=teacher["qformer_hidden"],
            speech=(cfg.speech_width, cfg.speech_width))  # fmt: skip
    train = [world.paths["labelled"]]
    if a.pseudo_labels and world.pseudo is not None:
        train.append(world.pseudo)
    signals = None
    if a.teacher:
        signals = {"_component_": "teachers.AudioLLMTeacher",
                   "path": str(world.teacher_dir / "model")}  # fmt: skip
    name = f"{arm_name}-s{seed}"
    recipe = make_recipe(
        cfg, name, model=student, loss=with_aid(copy.deepcopy(a.loss), ctc_aid(student),
                                                cfg.ctc_weight), train=train, paths=world.paths,
        steps=cfg.student_steps, lr=cfg.student_lr, seed=seed, teacher=signals,
        out_dir=world.students_dir / name,
    )  # fmt: skip
    for key, value in a.train.items():  # e.g. the on-policy arm's sampling settings
        setattr(recipe.train, key, value)
    return recipe


def run_student(world: World, arm_name: str, seed: int, timings: dict, split: str = "test") -> Path:
    """Train (or reuse) one student; evaluate it on `split`.

    Returns:
        The directory the study reads: the run dir for "test", `<run>/valid` for "valid".
    """
    recipe = student_recipe(world, arm_name, seed)
    role = "baseline" if arm_name == "ce_only" else "student"
    if split == "test":
        return train_and_evaluate(recipe, role, timings)
    return _evaluate_valid(world, recipe, role, timings)


def run_students(
    world: World, jobs: list[tuple[str, int]], timings: dict, split: str = "test"
) -> list[Path]:
    """`run_student` for every (arm, seed) of `jobs`, `world.cfg.jobs` at a time.

    Each run gets `cfg.threads` torch threads, in its own process when `cfg.jobs` > 1, so a
    run's numbers do not depend on how many run beside it. Returns the paths in job order.
    """
    from distill.demo._parallel import run_parallel

    calls = [(world, name, seed, split) for name, seed in jobs]
    results = run_parallel(_student_job, calls, world.cfg.jobs)
    for _, t in results:
        timings.update(t)
    return [p for p, _ in results]


def _one_student(world: World, name: str, seed: int, split: str, timings: dict) -> Path:
    from distill.demo._parallel import pinned_threads

    with pinned_threads(world.cfg.threads):
        return run_student(world, name, seed, timings, split)


def _student_job(world: World, name: str, seed: int, split: str) -> tuple[Path, dict]:
    timings: dict[str, float] = {}
    return _one_student(world, name, seed, split, timings), timings


def teacher_eval_dir(world: World, split: str) -> Path:
    """The teacher's evaluation on `split` (test: its run dir; valid: `<run>/valid`)."""
    if split == "test":
        return world.teacher_dir
    recipe = teacher_recipe(world.cfg, world.paths, world.found)
    return _evaluate_valid(world, recipe, "teacher", {})


def _evaluate_valid(world: World, recipe, role: str, timings: dict) -> Path:
    from distill.engine.evaluate import evaluate_one
    from distill.modeling.audio_llm import AudioLLM

    out = Path(recipe.output_dir)
    valid_dir = out / "valid"
    if (valid_dir / "metrics.json").is_file():
        return valid_dir
    if not (out / "model" / "config.json").is_file():
        t = time.perf_counter()
        print(f"[demo] training {recipe.name} ({recipe.optim.max_steps} steps)")
        recipe.fit()
        timings[f"{recipe.name}_train_s"] = round(time.perf_counter() - t, 1)
    recipe.data.test = world.paths["valid"]
    recipe.eval.efficiency = []  # tuning needs accuracy only
    model = AudioLLM.from_pretrained(out / "model")
    evaluate_one(model, valid_dir, name=recipe.name, role=role, recipe=recipe,
                 model_dir=out / "model")  # fmt: skip
    return valid_dir


__all__ = [
    "World",
    "add_pseudo_labels",
    "build_world",
    "is_done",
    "prepare",
    "run_student",
    "run_students",
    "student_recipe",
    "teacher",
    "teacher_eval_dir",
]
