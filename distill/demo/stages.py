"""The demo's audio LLMs: the SALMONN-recipe teacher, its pseudo-labels, and the students.

Step 3 of the demo. Every model here is an `AudioLLMConfig` over the foundation parts,
loaded through `whisper_path`, `audio_encoder_path` and `llm_path` like a released
checkpoint. Encoders and LM bases are frozen; the Q-Former, the projection and LoRA train,
as in SALMONN. Every stage is a `Recipe`: the library's own loop, checkpoints and evaluation.

- teacher: the larger LM (LoRA on q/v), trained on every train label;
- pseudo-labels: the teacher's greedy answers for the clips the students have no label for
  (distil-whisper's recipe: the teacher's signals cover all the audio);
- students: the smaller LM with its own tokenizer (LoRA on q/v/gate, the field's light
  student), one recipe per arm and seed. The CE-only arm trains on the labelled subset;
  distillation arms add the pseudo-labelled clips and the teacher's signals.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from distill.demo.config import DemoConfig
from distill.demo.foundation import read_done
from distill.recipe import Recipe


def _encoder_fields(cfg: DemoConfig, found: dict[str, str]) -> dict[str, Any]:
    """The frozen encoders (Whisper + CED from the foundation) and the Q-Former windows."""
    ced = read_done(found["audio_encoder"])
    return {
        "whisper_path": found["speech_encoder"],
        "audio_encoder": "ced",
        "audio_encoder_path": str(Path(found["audio_encoder"]) / "model.safetensors"),
        "audio_encoder_config": ced["config"],
        "second_per_window": cfg.second_per_window,
        "second_stride": cfg.second_per_window,
    }


def audio_llm_config(cfg: DemoConfig, found: dict[str, str], role: str) -> dict[str, Any]:
    """The AudioLLMConfig dict of the teacher or a student over the foundation parts."""
    from transformers import AutoTokenizer

    lm = found[f"{role}_lm"]
    tok = AutoTokenizer.from_pretrained(lm, local_files_only=True)
    qformer = cfg.teacher_qformer if role == "teacher" else cfg.student_qformer
    return {
        "name": f"demo-{role}",
        **_encoder_fields(cfg, found),
        "llm_path": lm,
        "qformer_hidden": qformer,
        "qformer_layers": 2,
        "qformer_heads": 4,
        "qformer_ffn": 2 * qformer,
        "lora": True,
        "lora_rank": 8,
        "lora_alpha": 32,
        "lora_dropout": cfg.lora_dropout,
        "lora_targets": list(cfg.teacher_lora if role == "teacher" else cfg.student_lora),
        "qformer_dropout": 0.0,
        "end_sym": tok.eos_token,
        "max_txt_len": 64,
    }


def encoders_config(cfg: DemoConfig, found: dict[str, str], tokenizer_dir: str) -> dict[str, Any]:
    """An AudioLLMConfig over the foundation's frozen encoders, a tiny random LM standing in.

    What the frozen-feature store reads (the encoders' rows and `frozen_fingerprint`, which
    no LM enters), so the store can be built before either LM has finished pretraining.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    llm = {"model_type": "llama", "vocab_size": len(tok), "hidden_size": 8,
           "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 1,
           "num_key_value_heads": 1, "bos_token_id": tok.bos_token_id,
           "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}  # fmt: skip
    return {
        "name": "demo-encoders",
        **_encoder_fields(cfg, found),
        "llm_config": llm,
        "tokenizer_path": tokenizer_dir,
        "end_sym": tok.eos_token,
        "qformer_hidden": 8,
        "qformer_layers": 1,
        "qformer_heads": 1,
        "qformer_ffn": 16,
        "lora": False,
    }


def make_recipe(
    cfg: DemoConfig,
    name: str,
    *,
    model: dict,
    loss: dict,
    train: list[str],
    paths: dict[str, str],
    steps: int,
    lr: float,
    seed: int,
    teacher: dict | None = None,
    test: str | None = None,
    out_dir: Path | None = None,
    inherit: dict | None = None,
) -> Recipe:
    """A demo Recipe: the library's loop with the demo's budget."""
    student = {"_component_": "distill.presets.build_model", "config": model, "seed": seed}
    if inherit:
        student["inherit"] = inherit
    return Recipe.from_dict(
        {
            "name": name,
            "output_dir": str(out_dir or Path(cfg.out_dir) / name),
            "seed": seed,
            "student": student,
            "teacher": teacher,
            "loss": loss,
            "data": {
                "train": train,
                "valid": paths["valid"],
                "test": test or paths["test"],
                "batch_size": cfg.batch_size,
                "num_workers": cfg.num_workers,
                "trim_fraction": 0.0,
            },
            "optim": {
                "lr": lr,
                "min_lr_ratio": 0.05,
                "warmup_steps": max(1, round(cfg.warmup * steps)),
                "max_steps": steps,
                "weight_decay": 0.01,
                "clip_grad_norm": 5.0,
            },
            "train": {
                "log_every": max(1, steps // 40),
                "save_every": max(1, steps // 2),
                "keep_last": 1,
                "eval_every": max(1, steps // 4),
                "eval_batches": 4,
                "trackers": [],
                "progress": cfg.progress,
                "cache_frozen_features": True,
                "feature_store": paths.get("features"),
            },
            "eval": {
                "num_beams": 1,
                "max_new_tokens": cfg.max_new_tokens,
                "batch_size": 64,
                "warmup": max(1, cfg.eval_iters // 10),
                "iters": cfg.eval_iters,
                "evaluate_teacher": False,
            },
        }
    )


def ctc_aid(model: dict[str, Any], tasks: tuple[str, ...] = ("asr",)) -> dict[str, Any]:
    """CTC on the Q-Former windows of ASR items: the bridge aid (not distillation).

    With frozen encoders and a frozen LM, the Q-Former must learn to carry each window's
    words in time order; answer CE alone barely moves in the demo's budget (valid token
    accuracy 0.33 after 300 teacher steps, 0.87 with this aid), so every model gets it.
    """
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(model["llm_path"], local_files_only=True))
    return {"_component_": "losses.CTCAux", "width": model["qformer_hidden"],
            "vocab_size": vocab, "field": "qformer", "tasks": list(tasks)}  # fmt: skip


def teacher_recipe(
    cfg: DemoConfig, paths: dict[str, str], found: dict[str, str], processes: int = 1
) -> Recipe:
    """SALMONN's recipe over the foundation parts: CE (+ the CTC aid) on every train label.

    `processes`: how many data-parallel processes will run it; each gets
    `cfg.batch_size / processes` clips a step, so the global batch is `cfg.batch_size`.
    """
    from distill.demo.arms import with_aid

    model = audio_llm_config(cfg, found, "teacher")
    loss = with_aid({"_component_": "losses.CE"}, ctc_aid(model), cfg.ctc_weight)
    recipe = make_recipe(
        cfg, "teacher", model=model, loss=loss, train=[paths["train"]], paths=paths,
        steps=cfg.teacher_steps, lr=cfg.teacher_lr, seed=cfg.seed,
    )  # fmt: skip
    recipe.data.batch_size = cfg.batch_size // processes
    return recipe


def train_teacher(
    cfg: DemoConfig,
    paths: dict[str, str],
    found: dict[str, str],
    timings: dict[str, float] | None = None,
    group: Any = None,
) -> Path:
    """Fit the teacher (unless its final model is saved) as `cfg.teacher_processes` says.

    With more than one process it trains data-parallel, as `accelerate launch --multi_gpu
    --num_processes N recipes/...` would: Accelerate's DDP (gloo on CPU), `cfg.threads`
    torch threads and `cfg.batch_size / N` clips per process, rank 0 saving the run; on
    `group` (from `teacher_group`, started ahead) or on processes started here. With one,
    it trains here with `cfg.world_threads` threads.
    """
    from distill.demo._parallel import data_parallel, pinned_threads

    n = cfg.teacher_processes
    recipe = teacher_recipe(cfg, paths, found, n)
    out = Path(recipe.output_dir)
    if n <= 1:
        with pinned_threads(cfg.world_threads):
            return train(recipe, timings)
    if (out / "model" / "config.json").is_file():
        return out
    print(f"[demo] training teacher ({recipe.optim.max_steps} steps, data-parallel: {n} "
          f"processes of {recipe.data.batch_size} clips)")  # fmt: skip
    t = time.perf_counter()
    if group is None:
        data_parallel(_teacher_rank, (cfg, paths, found), n, cfg.threads)
    else:
        group.run(_teacher_rank, (cfg, paths, found))
    if timings is not None:
        timings[f"{recipe.name}_train_s"] = round(time.perf_counter() - t, 1)
    return out


@contextlib.contextmanager
def teacher_group(cfg: DemoConfig) -> Iterator[Any]:
    """The teacher's data-parallel processes, started now (None when they are not needed:
    one process, or a teacher already trained); `train_teacher(..., group=)` runs on them."""
    from distill.demo._parallel import ProcessGroup

    trained = (Path(cfg.out_dir) / "teacher" / "model" / "config.json").is_file()
    if cfg.teacher_processes <= 1 or trained:
        yield None
        return
    with ProcessGroup(cfg.teacher_processes, cfg.threads) as group:
        yield group


def _teacher_rank(cfg: DemoConfig, paths: dict[str, str], found: dict[str, str]) -> None:
    teacher_recipe(cfg, paths, found, cfg.teacher_processes).fit()


def is_done(run_dir: str | Path) -> bool:
    return (Path(run_dir) / "eval" / "metrics.json").is_file()


def train_and_evaluate(recipe: Recipe, role: str, timings: dict[str, float] | None = None) -> Path:
    """Fit the recipe and evaluate its model on `data.test` (reused when already done)."""
    out = Path(recipe.output_dir)
    if is_done(out):
        print(f"[demo] {recipe.name}: reusing {out}")
        return out
    train(recipe, timings)
    return evaluate(recipe, role, timings)


def train(recipe: Recipe, timings: dict[str, float] | None = None) -> Path:
    """Fit the recipe unless its final model is already saved; return its run dir."""
    out = Path(recipe.output_dir)
    if (out / "model" / "config.json").is_file():
        return out
    print(f"[demo] training {recipe.name} ({recipe.optim.max_steps} steps)")
    t = time.perf_counter()
    recipe.fit()
    if timings is not None:
        timings[f"{recipe.name}_train_s"] = round(time.perf_counter() - t, 1)
    return out


def evaluate(recipe: Recipe, role: str, timings: dict[str, float] | None = None) -> Path:
    """Evaluate the recipe's trained model on `data.test` into `<run>/eval` (reused)."""
    from distill.engine.evaluate import evaluate_one
    from distill.modeling.audio_llm import AudioLLM

    out = Path(recipe.output_dir)
    if is_done(out):
        return out
    t = time.perf_counter()
    model = AudioLLM.from_pretrained(out / "model")
    evaluate_one(model, out / "eval", name=recipe.name, role=role, recipe=recipe,
                 model_dir=out / "model")  # fmt: skip
    if timings is not None:
        timings[f"{recipe.name}_eval_s"] = round(time.perf_counter() - t, 1)
    return out


def pseudo_label(
    cfg: DemoConfig,
    teacher_dir: str | Path,
    unlabelled: str,
    out_file: Path,
    store: str | None = None,
    pool: Any = None,
) -> str:
    """The teacher's greedy answers for the unlabelled clips, scored and filtered.

    Each item keeps its audio, task and prompt; its text becomes the teacher's answer
    (`"label": "teacher"` marks it). Answers are scored by the teacher's mean token
    log-probability (`distill.pseudo`); empty ones, and those under
    `cfg.pseudo_min_logprob` when it is set, are dropped. What was kept and why goes to
    `<out>.stats.json`, with how many kept answers differ from the (hidden) true labels.

    The clips are answered in two halves cut at a generation batch boundary, so the batches
    (and the answers) are those of one pass; with `pool` (an open `_parallel.executor`) the
    second half runs on a worker while this process answers the first.
    """
    from distill.data.annotations import read_annotations, write_annotations
    from distill.pseudo import filter_pseudo_labels

    out_file = Path(out_file)
    if pseudo_labels_current(out_file, teacher_dir):
        return str(out_file)
    if out_file.is_file():
        print(f"[demo] {out_file}: written by another teacher (or an older version); "
              "answering again")  # fmt: skip
    items = read_annotations(unlabelled)
    if not items:
        return write_annotations([], out_file)
    cut = min(len(items), PSEUDO_BATCH * -(-len(items) // (2 * PSEUDO_BATCH)))
    first, rest = items[:cut], items[cut:]
    later = None
    if rest and pool is not None:
        later = pool.submit(teacher_answers, cfg, str(teacher_dir), rest, store, False)
    texts, scores = teacher_answers(cfg, str(teacher_dir), first, store, cfg.progress)
    if rest:
        more = later.result() if later is not None else (
            teacher_answers(cfg, str(teacher_dir), rest, store, cfg.progress))  # fmt: skip
        texts.update(more[0])
        scores.update(more[1])
    kept, stats = filter_pseudo_labels(items, texts, scores, min_logprob=cfg.pseudo_min_logprob)
    truth = {it.id: it.text for it in items}
    info = stats.to_dict() | {
        "teacher": teacher_fingerprint(teacher_dir),
        "min_logprob": cfg.pseudo_min_logprob,
        # the demo knows the labels it hid: how clean the kept pseudo-labels are
        "kept_wrong": {t: sum(k.text != truth[k.id] for k in kept if k.task == t)
                       for t in stats.by_task},
        "logprob_quantiles": _quantiles([scores[it.id] for it in items]),
    }  # fmt: skip
    out_file.parent.mkdir(parents=True, exist_ok=True)
    path = write_annotations(kept, out_file)
    # last: the stats name the teacher, which marks the answers as this teacher's
    (out_file.with_suffix(".stats.json")).write_text(json.dumps(info, indent=1) + "\n")
    return path


PSEUDO_BATCH = 64  # clips per generation batch when pseudo-labelling


def teacher_fingerprint(teacher_dir: str | Path) -> str:
    """A hash of the trained teacher's weights: which teacher wrote a pseudo-label file."""
    import hashlib

    digest = hashlib.sha256()
    with open(Path(teacher_dir) / "model" / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:24]


def pseudo_labels_current(out_file: str | Path, teacher_dir: str | Path) -> bool:
    """Whether `out_file` holds this teacher's answers (its stats name the teacher's hash).

    A retrained teacher (another setting, or a deleted run directory) must not reuse the
    answers of the one before it.
    """
    out_file = Path(out_file)
    stats = out_file.with_suffix(".stats.json")
    if not (out_file.is_file() and stats.is_file()):
        return False
    try:
        written_by = json.loads(stats.read_text()).get("teacher")
    except json.JSONDecodeError:
        return False
    return written_by == teacher_fingerprint(teacher_dir)


def teacher_answers(
    cfg: DemoConfig, teacher_dir: str, items: list, store: str | None, progress: bool
) -> tuple[dict[str, str], dict[str, float]]:
    """The teacher's greedy answer (id -> text) and its mean token log-probability (id ->
    score) for each item, `cfg.threads` torch threads (a worker's job, or this process's)."""
    from distill.demo._parallel import pinned_threads
    from distill.engine.features import attach_store
    from distill.eval.runner import generate_all
    from distill.modeling.audio_llm import AudioLLM
    from distill.pseudo import answer_logprobs

    with pinned_threads(cfg.threads):
        model = AudioLLM.from_pretrained(Path(teacher_dir) / "model")
        attach_store(model, store)  # the frozen encoders' rows, computed once for the world
        texts, _ = generate_all(model, items, num_beams=1, max_new_tokens=cfg.max_new_tokens,
                                batch_size=PSEUDO_BATCH, progress=progress)  # fmt: skip
        scores = answer_logprobs(model, items, texts, batch_size=PSEUDO_BATCH, progress=progress)
    return texts, scores


def _quantiles(values: list[float]) -> dict[str, float]:
    import numpy as np

    finite = np.array([v for v in values if v > float("-inf")])
    if not finite.size:
        return {}
    qs = (0.05, 0.25, 0.5, 0.75, 0.95)
    return {f"q{int(100 * q)}": round(float(np.quantile(finite, q)), 4) for q in qs}
