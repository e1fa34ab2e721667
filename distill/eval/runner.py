"""Run one AudioLLM over a test set and score it; write metrics.json and predictions.

Glossary: b batch items, s waveform samples.

    result = evaluate_model(model, read_test_items("test.json"), decode="salmonn")
    write_outputs(out_dir, model=model, name="ddat", role="student", result=result,
                  efficiency={"baseline": measure_baseline(model)})

Decoding defaults to the "salmonn" preset (`distill.modeling.generation.DECODE_PRESETS`:
SALMONN's decode_config.yaml, which audiolm-evaluator's `salmonn_eval_config.yaml` also uses:
4 beams, 200 new tokens, min_length 1; eval batch 8). metrics.json records every setting under
"decoding". The field lowercases outputs before scoring; both scorers here lowercase
internally, and the submission keeps the model's text as generated.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

from distill.contracts import SAMPLE_RATE, AudioBatch
from distill.data.annotations import Item
from distill.eval.asr import word_error_rate
from distill.eval.caption import caption_metrics
from distill.eval.efficiency import describe_device, model_device, rtfx, timed
from distill.eval.io import IdMismatchError, align, write_jsonl, write_submission
from distill.modeling.generation import DecodeSettings, decode_settings

SCHEMA = "distill.eval/1"
ASR_TASKS = ("asr",)
CAPTION_TASKS = ("audiocaption", "audiocaption_v2")
_VERSIONED = (
    "distill", "torch", "transformers", "peft", "accelerate", "jiwer", "aac-metrics",
    "whisper-normalizer", "numpy", "tokenizers",
)  # fmt: skip


def load_batch(items: Sequence[Item]) -> AudioBatch:
    """Load and right-pad the audio of some items into one `AudioBatch` (answers empty).

    Unlike training (`AudioDataset` skips bad files), a missing or unreadable test clip raises
    `AudioError` naming the file: every test id must get a prediction.
    """
    from distill.data.audio import load_audio
    from distill.data.dataset import Example, collate

    examples = [
        Example(it.id, load_audio(it.path, expand=it.expand), it.task, it.prompt, "")
        for it in items
    ]
    return collate(examples)


def score_task(
    task: str, ids: Sequence[str], hypotheses: Sequence[str], references: Sequence[Sequence[str]]
) -> dict:
    """Score one task's predictions with its metric (WER for ASR, CIDEr-D family for captions)."""
    if task in ASR_TASKS:
        return word_error_rate(hypotheses, [r[0] if r else "" for r in references], ids)
    if task in CAPTION_TASKS:
        return caption_metrics(hypotheses, references, ids)
    return {"metrics": [], "notes": [f"no metric is defined for task {task!r}"]}


def generate_all(
    model: nn.Module,
    items: Sequence[Item],
    *,
    decode: DecodeSettings | str = "greedy",
    num_beams: int | None = None,
    max_new_tokens: int | None = None,
    batch_size: int,
    progress: bool = True,
) -> tuple[dict[str, str], dict]:
    """Generate a text for every item. Returns (id -> text, throughput dict with RTFx).

    `decode` (settings or preset name) is passed to `model.generate(batch, **settings)`;
    num_beams and max_new_tokens, when given, override it. Processing time is the
    synchronized wall time of `model.generate` (audio decoding excluded); audio seconds are
    the loaded (padded to >= 1 s, cut at 30 s) durations.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    settings = decode_settings(decode, num_beams=num_beams, max_new_tokens=max_new_tokens)
    kw = settings.to_dict()
    device = model_device(model)
    model.eval()
    texts: dict[str, str] = {}
    audio_s = gen_s = 0.0
    starts = range(0, len(items), batch_size)
    for start in tqdm(starts, desc="generate", disable=not progress, leave=False):
        batch = load_batch(items[start : start + batch_size])
        audio_s += float(batch.lengths.sum()) / SAMPLE_RATE
        batch = batch.to(device)
        outs, seconds = timed(
            lambda b=batch: model.generate(b, **kw),
            device,
        )
        gen_s += seconds
        if len(outs) != len(batch):
            raise RuntimeError(f"model.generate returned {len(outs)} texts for {len(batch)} items")
        texts.update(zip(batch.ids, outs))
    throughput = {
        "audio_seconds": audio_s,
        "generate_seconds": gen_s,
        "rtfx": rtfx(audio_s, gen_s) if gen_s > 0 else None,
        "units": {"audio_seconds": "s", "generate_seconds": "s", "rtfx": "x (audio s / compute s)"},
        "device": describe_device(device),
    }
    return texts, throughput


def evaluate_model(
    model: nn.Module,
    test_items: Sequence[Item],
    *,
    decode: DecodeSettings | str = "salmonn",
    num_beams: int | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = 8,
    references: Mapping[str, str | Sequence[str]] | None = None,
    progress: bool = True,
) -> dict:
    """Generate for every test item and score each task.

    Args:
        model: an AudioLLM (anything with `generate(batch, **DecodeSettings fields)`).
        test_items: items from `read_test_items` (id, path, task, prompt, references).
        decode: the decoding settings or a preset name; "salmonn" is the field's protocol.
        num_beams, max_new_tokens: override `decode` when given.
        batch_size: items per `generate` call.
        references: id -> reference text(s); overrides the items' own references. Items with
            no references are predicted but not scored.

    Returns:
        {"accuracy": {task: metric dict}, "predictions": [{"testset_id", "task", "text",
        "references", + the item's scores when scored: "errors", "reference_words" (ASR) or
        "cider_d" (+ "spice", "spider") (captions)}], "decoding": {every `DecodeSettings`
        field, batch_size}, "throughput": {...},
        "data": {...}}. The per-item scores live in `predictions` only (read them back with
        `distill.stats.load_item_scores`), not in the accuracy dicts.

    Raises:
        IdMismatchError: `references` names ids that are not test items (or misses some).
    """
    items = list(test_items)
    if not items:
        raise ValueError("evaluate_model: the test set is empty")
    refs: dict[str, list[str]] = {it.id: list(it.references) for it in items}
    if references is not None:
        given = {k: [v] if isinstance(v, str) else list(v) for k, v in references.items()}
        unknown = [k for k in given if k not in refs]
        missing = [k for k in refs if k not in given]
        if unknown or missing:
            raise IdMismatchError(
                f"references do not match the test items: {len(unknown)} reference ids are not "
                f"test items {unknown[:10]}; {len(missing)} test items have no reference {missing[:10]}"
            )
        refs = given
    settings = decode_settings(decode, num_beams=num_beams, max_new_tokens=max_new_tokens)
    texts, throughput = generate_all(
        model, items, decode=settings, batch_size=batch_size, progress=progress
    )
    accuracy, per_item = {}, {}
    for task in dict.fromkeys(it.task for it in items):
        scored = {it.id: refs[it.id] for it in items if it.task == task and refs[it.id]}
        if not scored:
            accuracy[task] = {"metrics": [], "notes": ["no references: predictions only"]}
            continue
        ids, hyps, mrefs = align({i: texts[i] for i in scored}, scored)
        accuracy[task] = score_task(task, ids, hyps, mrefs)
        # per-item scores go to predictions.jsonl only, so metrics.json stays small
        per_item.update(accuracy[task].pop("per_item", {}))
    predictions = [
        {"testset_id": it.id, "task": it.task, "text": texts[it.id], "references": refs[it.id],
         **per_item.get(it.id, {})}
        for it in items
    ]  # fmt: skip
    return {
        "accuracy": accuracy,
        "predictions": predictions,
        "decoding": {**settings.to_dict(), "batch_size": batch_size},
        "throughput": throughput,
        "data": {"items": len(items), "tasks": dict(Counter(it.task for it in items))},
    }


# ---- provenance ---------------------------------------------------------------------------


def param_counts(model: nn.Module) -> dict:
    params = list(model.parameters())  # shared parameters appear once
    return {
        "params_total": sum(p.numel() for p in params),
        "params_trainable": sum(p.numel() for p in params if p.requires_grad),
    }


def size_on_disk(path: str | os.PathLike | None) -> int | None:
    """Total bytes of the files under `path` (a saved model dir), or None."""
    if path is None or not Path(path).exists():
        return None
    p = Path(path)
    return (
        p.stat().st_size
        if p.is_file()
        else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    )


def hardware_info(device: torch.device | None = None) -> dict:
    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        import psutil

        info["ram_gb"] = round(psutil.virtual_memory().total / 1024**3, 2)
    except ImportError:  # pragma: no cover - psutil is a dependency
        pass
    if torch.cuda.is_available():
        on_cuda = device is not None and device.type == "cuda"
        idx = (device.index or 0) if on_cuda else 0
        props = torch.cuda.get_device_properties(idx)
        info.update(gpu=props.name, gpu_count=torch.cuda.device_count(),
                    gpu_memory_gb=round(props.total_memory / 1024**3, 2), cuda=torch.version.cuda)  # fmt: skip
    if device is not None:
        info["device"] = describe_device(device)
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def write_outputs(
    out_dir: str | os.PathLike,
    *,
    model: nn.Module,
    name: str,
    role: str,
    result: dict | None = None,
    efficiency: Mapping[str, dict] | None = None,
    model_dir: str | os.PathLike | None = None,
    extra: Mapping | None = None,
    lowercase_submission: bool = True,
) -> dict:
    """Write OUT_DIR/metrics.json (+ predictions.csv and predictions.jsonl when `result`).

    predictions.csv is lowercased unless `lowercase_submission` is False (the evaluator
    lowercases); predictions.jsonl keeps the model's exact texts.

    Returns:
        The metrics dict that was written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = getattr(model, "config", None)
    metrics = {
        "schema": SCHEMA,
        "model": {
            "name": name,
            "role": role,
            "dir": None if model_dir is None else str(model_dir),
            **param_counts(model),
            "size_on_disk_bytes": size_on_disk(model_dir),
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "config": config.to_dict() if hasattr(config, "to_dict") else None,
        },
        "accuracy": {} if result is None else result["accuracy"],
        "decoding": None if result is None else result["decoding"],
        "throughput": None if result is None else result["throughput"],
        "efficiency": dict(efficiency or {}),
        "data": None if result is None else result["data"],
        "hardware": hardware_info(model_device(model)),
        "versions": versions(),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
        **dict(extra or {}),
    }
    if result is not None and "strict" in metrics["efficiency"]:
        metrics["efficiency"]["strict"]["rtfx"] = result["throughput"]["rtfx"]
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    if result is not None:
        preds = result["predictions"]
        write_submission(
            out / "predictions.csv",
            ((p["testset_id"], p["text"]) for p in preds),
            lowercase=lowercase_submission,
        )
        write_jsonl(out / "predictions.jsonl", preds)
    return metrics
