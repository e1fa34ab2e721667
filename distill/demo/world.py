"""What every student of the demo and the study shares: data, foundation, teacher, pseudo-labels.

Built once per `DemoConfig.seed` (and label fraction) and reused by every later run.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
import warnings
from concurrent import futures
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path

from distill._instantiate import ConfigError
from distill.demo.arms import INHERIT_PARTS, arm, with_aid
from distill.demo.config import DemoConfig
from distill.demo.corpus import make_data
from distill.demo.foundation import build_foundation
from distill.demo.foundation import is_done as foundation_is_done
from distill.demo.stages import (
    audio_llm_config,
    ctc_aid,
    encoders_config,
    evaluate,
    is_done,
    make_recipe,
    pseudo_label,
    pseudo_labels_current,
    teacher_group,
    teacher_recipe,
    train,
    train_and_evaluate,
    train_teacher,
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
    def pseudo_file(self) -> Path:
        return Path(self.paths["labelled"]).parent / "pseudo_labels.json"

    @property
    def students_dir(self) -> Path:
        return Path(self.cfg.out_dir) / "students" / f"labels-{self.cfg.student_label_fraction:g}"


# DemoConfig fields a world's numbers do not depend on (or that have their own directories):
# where it goes, progress bars, how many runs go side by side, which student seeds run and
# the label fraction (students/labels-<f>/, data/labels-<f>/)
UNSTAMPED = ("out_dir", "progress", "jobs", "student_seeds", "student_label_fraction")
SETTINGS_FILE = "settings.json"


def check_settings(cfg: DemoConfig) -> None:
    """Refuse to reuse an output directory built with other settings.

    Finished stages are reused by their files, so `--student-steps 800` over a directory of
    500-step runs would report those runs as 800-step ones. The first run writes
    `<out>/settings.json` (every `DemoConfig` field but `UNSTAMPED`); a later run whose
    settings differ stops here, naming each field, before it touches anything.

    Raises:
        ConfigError: naming the file, the fields that differ (stored -> asked) and what to do.
    """
    from dataclasses import asdict

    out = Path(cfg.out_dir)
    file = out / SETTINGS_FILE
    asked = json.loads(json.dumps({k: v for k, v in asdict(cfg).items() if k not in UNSTAMPED}))
    if file.is_file():
        try:
            stored = json.loads(file.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{file}: not JSON ({err}); delete it or use another --out") from err
        changed = {k: (stored.get(k, "(absent)"), asked.get(k, "(absent)"))
                   for k in sorted(set(stored) | set(asked)) if stored.get(k) != asked.get(k)}  # fmt: skip
        if changed:
            what = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ConfigError(
                f"{out} was built with other settings ({file}): {what}. Its finished stages "
                "would be reused as if made with the new ones. Use another --out, or --fresh "
                "to delete this one and redo every stage."
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(asked, indent=1, sort_keys=True) + "\n")


def prepare(cfg: DemoConfig, timings: dict[str, float] | None = None) -> World:
    """Corpus, tokenizers, label split and foundation models (pretrained and saved)."""
    from distill.demo._parallel import pinned_threads

    timings = {} if timings is None else timings
    check_settings(cfg)
    t = time.perf_counter()
    paths = make_data(cfg)
    timings["data_s"] = round(time.perf_counter() - t, 1)
    found = build_foundation(cfg, paths, timings)
    with pinned_threads(cfg.threads):  # as `build_world` computes it: the same store
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
    from distill.modeling.feature_cache import FrozenFeatureCache
    from distill.presets import build_model

    store = Path(cfg.out_dir) / "features"
    done = store / "done.json"
    t = time.perf_counter()
    config = encoders_config(cfg, found, paths["teacher_tokenizer"])  # no LM needed yet
    model = build_model(config=config, seed=cfg.seed)
    if (
        done.is_file()
        and FrozenFeatureCache.store_file(store, model.frozen_fingerprint()).is_file()
    ):
        return str(store)
    # none yet, or one under another fingerprint (written by an older version, whose
    # fingerprint hashed other things): every later model would miss it and run its
    # encoders live, so write the store these encoders find
    out = build_feature_store(model, [paths["train"], paths["valid"]], store,
                              batch_size=64, progress=cfg.progress)  # fmt: skip
    done.write_text(json.dumps({"file": out.name}) + "\n")
    timings["features_s"] = round(time.perf_counter() - t, 1)
    return str(store)


def teacher(world: World):
    """The teacher's Recipe (SALMONN's recipe over the foundation parts)."""
    return teacher_recipe(world.cfg, world.paths, world.found)


def add_pseudo_labels(world: World, timings: dict[str, float] | None = None, pool=None) -> World:
    """The trained teacher's answers for the clips the students have no label for.

    `pool` (an open `_parallel.executor`) answers half of the clips on a worker.
    """
    if world.cfg.student_label_fraction >= 1.0:
        return world
    t = time.perf_counter()
    out = world.pseudo_file
    fresh = not pseudo_labels_current(out, world.teacher_dir)
    world.pseudo = pseudo_label(world.cfg, world.teacher_dir, world.paths["unlabelled"], out,
                                world.paths.get("features"), pool)  # fmt: skip
    if fresh and timings is not None:
        timings["pseudo_labels_s"] = round(time.perf_counter() - t, 1)
    return world


def build_world(cfg: DemoConfig, timings: dict[str, float], pool=None) -> World:
    """Data, foundation, feature store, teacher, its evaluation and its pseudo-labels.

    The same stages as `prepare` + training the teacher + `add_pseudo_labels`, scheduled on
    `cfg.jobs` processes so that the path to the students is short: the speech and audio
    encoders pretrain side by side; the teacher LM follows the audio encoder while the
    feature store, then the student LM, follow the speech encoder; the teacher trains
    data-parallel over `cfg.teacher_processes` processes of its own (`train_teacher`),
    started as soon as a core frees so that their imports are done when it starts; its
    test evaluation and half of its pseudo-labels run on the workers while this process
    answers the other half. Every stage has a fixed thread and process count
    (`cfg.threads` in workers), so the numbers do not depend on `jobs`; finished stages
    are reused. `pool`, an open `_parallel.executor(cfg.jobs)`, is used instead of a new
    one (the demo hands the same warm workers to the students).
    """
    from distill.demo._parallel import executor, pinned_threads
    from distill.demo.foundation import _pretrain_part, foundation_dirs

    check_settings(cfg)
    t = time.perf_counter()
    paths = make_data(cfg)
    timings["data_s"] = round(time.perf_counter() - t, 1)
    found = foundation_dirs(cfg)
    world = World(cfg, paths, found, Path(cfg.out_dir) / "teacher", None)
    try:
        with contextlib.ExitStack() as stack:
            if pool is None:
                pool = stack.enter_context(executor(cfg.jobs))

            def part(name: str):
                if foundation_is_done(found[name]):
                    print(f"[demo] foundation {name}: reusing {found[name]}")
                    return None
                print(f"[demo] foundation {name}: pretraining")
                return pool.submit(_pretrain_part, cfg, paths, name, found[name])

            def wait(name: str, future) -> None:
                if future is not None:
                    timings[f"foundation_{name}_s"] = future.result()

            speech, audio = part("speech_encoder"), part("audio_encoder")
            wait("audio_encoder", audio)
            teacher_lm = part("teacher_lm")  # on the worker the audio encoder freed
            wait("speech_encoder", speech)
            store = pool.submit(_features_job, cfg, paths, found)
            student_lm = part("student_lm")  # on the worker the store frees
            # the teacher's processes start (and import) on the first core these free
            pending = [f for f in (teacher_lm, student_lm) if f is not None]
            if pending:
                futures.wait(pending, return_when=futures.FIRST_COMPLETED)
            group = stack.enter_context(teacher_group(cfg))
            wait("teacher_lm", teacher_lm)
            paths["features"], seconds = store.result()
            if seconds is not None:
                timings["features_s"] = seconds
            wait("student_lm", student_lm)
            train_teacher(cfg, paths, found, timings, group)  # its processes take both cores
            evaluation = None
            if not is_done(world.teacher_dir):
                evaluation = pool.submit(_evaluate_teacher_job, world)
            with pinned_threads(cfg.threads):
                add_pseudo_labels(world, timings, pool)  # half of it on the other worker
            if evaluation is not None:
                timings.update(evaluation.result())
    except BrokenProcessPool:
        warnings.warn(
            "distill demo: worker processes died (a script without `if __name__ == "
            "'__main__':`, or out of memory?); building the rest of the world here, one "
            "stage at a time",
            RuntimeWarning,
            stacklevel=2,
        )
        return build_world(replace(cfg, jobs=1), timings)
    return world


def _features_job(cfg: DemoConfig, paths: dict[str, str], found: dict[str, str]):
    from distill.demo._parallel import pinned_threads

    timings: dict[str, float] = {}
    with pinned_threads(cfg.threads):
        store = frozen_features(cfg, paths, found, timings)
    return store, timings.get("features_s")


def _evaluate_teacher_job(world: World) -> dict[str, float]:
    from distill.demo._parallel import pinned_threads

    timings: dict[str, float] = {}
    with pinned_threads(world.cfg.threads):
        evaluate(teacher(world), "teacher", timings)
    return timings


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
    if a.inherit:
        if student["qformer_hidden"] != teacher["qformer_hidden"]:
            raise ConfigError(
                f"arm {arm_name!r} inherits the teacher's Q-Former: set student_qformer = "
                f"teacher_qformer ({teacher['qformer_hidden']}), got {student['qformer_hidden']}"
            )
        inherit = {"from": str(world.teacher_dir / "model"), "parts": list(INHERIT_PARTS)}
    else:
        inherit = None
    name = f"{arm_name}-s{seed}"
    aid = ctc_aid(student, cfg.student_ctc_tasks)
    recipe = make_recipe(
        cfg, name, model=student, loss=with_aid(copy.deepcopy(a.loss), aid, cfg.ctc_weight),
        train=train, paths=world.paths,
        steps=cfg.student_steps, lr=cfg.student_lr, seed=seed, teacher=signals,
        out_dir=world.students_dir / name, inherit=inherit,
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
    world: World, jobs: list[tuple[str, int]], timings: dict, split: str = "test", pool=None
) -> list[Path]:
    """`run_student` for every (arm, seed) of `jobs`, `world.cfg.jobs` at a time.

    Each run gets `cfg.threads` torch threads, in its own process when `cfg.jobs` > 1, so a
    run's numbers do not depend on how many run beside it; `pool` (an open
    `_parallel.executor`) runs them on its warm workers. Returns the paths in job order.
    """
    from distill.demo._parallel import run_parallel

    calls = [(world, name, seed, split) for name, seed in jobs]
    results = run_parallel(_student_job, calls, world.cfg.jobs, pool)
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
    train(recipe, timings)
    recipe.data.test = world.paths["valid"]
    recipe.eval.efficiency = []  # tuning needs accuracy only
    model = AudioLLM.from_pretrained(out / "model")
    evaluate_one(model, valid_dir, name=recipe.name, role=role, recipe=recipe,
                 model_dir=out / "model")  # fmt: skip
    return valid_dir


__all__ = [
    "World",
    "add_pseudo_labels",
    "check_settings",
    "build_world",
    "is_done",
    "prepare",
    "run_student",
    "run_students",
    "student_recipe",
    "teacher",
    "teacher_eval_dir",
]
