"""Pseudo-labels for sequence-level KD: the teacher's answers, scored and filtered.

distil-whisper trains its students on the teacher's transcripts and drops those whose WER
against the label exceeds a threshold. Where no label exists, the teacher's own confidence
is the only signal: `answer_logprobs` scores each answer by its mean token log-probability
under the model that wrote it (teacher-forced, end token included), and `filter_pseudo_labels`
keeps an answer when it passes the WER rule (labelled clips) or the log-prob rule (the rest).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from distill.data.annotations import Item


@torch.no_grad()
def answer_logprobs(
    model: nn.Module,
    items: Sequence[Item],
    answers: Mapping[str, str],
    *,
    batch_size: int = 32,
    progress: bool = False,
) -> dict[str, float]:
    """Mean token log-probability of `answers[item.id]` for every item, under `model`.

    `model` is an AudioLLM (its teacher-forced `forward` returns logits on the answer span,
    end token included). An empty answer scores -inf.

    Raises:
        KeyError: an item has no answer (names the id).
    """
    from tqdm.auto import tqdm

    from distill.eval.efficiency import model_device
    from distill.eval.runner import load_batch

    missing = [it.id for it in items if it.id not in answers]
    if missing:
        raise KeyError(f"no answer for {len(missing)} item(s), e.g. {missing[0]!r}")
    device = model_device(model)
    model.eval()
    scores: dict[str, float] = {}
    todo = [it for it in items if answers[it.id].strip()]
    scores.update({it.id: -math.inf for it in items if not answers[it.id].strip()})
    starts = range(0, len(todo), batch_size)
    for start in tqdm(starts, desc="score answers", disable=not progress, leave=False):
        chunk = todo[start : start + batch_size]
        batch = load_batch(chunk)
        batch = replace(batch, answers=[answers[it.id].strip() for it in chunk]).to(device)
        out = model(batch)
        logp = torch.log_softmax(out.logits.float(), dim=-1)
        tok = logp.gather(-1, out.token_ids[..., None])[..., 0]  # [b, n]
        m = out.mask.float()
        mean = (tok * m).sum(-1) / m.sum(-1).clamp(min=1.0)
        scores.update(zip(out.ids, mean.tolist()))
    return scores


@dataclass
class FilterStats:
    """What `filter_pseudo_labels` kept and dropped, and why (written beside the labels)."""

    items: int = 0
    kept: int = 0
    dropped_empty: int = 0
    dropped_wer: int = 0
    dropped_logprob: int = 0
    by_task: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def filter_pseudo_labels(
    items: Sequence[Item],
    answers: Mapping[str, str],
    logprobs: Mapping[str, float] | None = None,
    *,
    labels: Mapping[str, str] | None = None,
    max_wer: float = 0.10,
    min_logprob: float | None = None,
) -> tuple[list[Item], FilterStats]:
    """Keep the teacher's answers that pass the filter; return them as labelled items.

    Args:
        items: the clips (their own `text` is ignored: it may be empty).
        answers: id -> the teacher's answer.
        logprobs: id -> mean token log-probability (`answer_logprobs`); needed when
            `min_logprob` is set.
        labels: id -> a human label, where one exists: the answer is kept when its WER
            against it is <= `max_wer` (distil-whisper's rule; ASR items only).
        min_logprob: an answer without a label is kept when its mean log-probability is
            >= this; None keeps every non-empty one.

    Returns:
        (kept items with `text` = the answer, `references` = (answer,) and
        `extra["label"] = "teacher"`, stats).
    """
    if min_logprob is not None and logprobs is None:
        raise ValueError("min_logprob is set but no logprobs were given (see answer_logprobs)")
    labels = labels or {}
    wers = _item_wers(items, answers, labels)
    stats = FilterStats(items=len(items))
    kept: list[Item] = []
    for it in items:
        task = stats.by_task.setdefault(it.task, {"items": 0, "kept": 0})
        task["items"] += 1
        text = answers.get(it.id, "").strip()
        if not text:
            stats.dropped_empty += 1
            continue
        if it.id in wers:
            if wers[it.id] > max_wer:
                stats.dropped_wer += 1
                continue
        elif min_logprob is not None and logprobs[it.id] < min_logprob:
            stats.dropped_logprob += 1
            continue
        task["kept"] += 1
        stats.kept += 1
        kept.append(
            replace(it, text=text, references=(text,), extra={**it.extra, "label": "teacher"})
        )
    return kept, stats


def _item_wers(items: Sequence[Item], answers: Mapping[str, str], labels: Mapping[str, str]):
    """id -> WER of the answer against its label, by the field's WER (`eval.asr`)."""
    from distill.eval.asr import word_error_rate

    scored = [
        it
        for it in items
        if it.id in labels and it.task == "asr" and answers.get(it.id, "").strip()
    ]
    if not scored:
        return {}
    per_item = {}
    for it in scored:  # one at a time: an all-empty reference corpus is per item, not an error
        ref = labels[it.id]
        try:
            out = word_error_rate([answers[it.id]], [ref], [it.id])["per_item"][it.id]
            per_item[it.id] = out["errors"] / out["reference_words"]
        except ValueError:  # the label normalises to no words: any answer is all error
            per_item[it.id] = 1.0
    return per_item


# ---- the pseudo-label cache (`distill cache --pseudo-labels`) ------------------------------
PSEUDO_VERSION = 1


def build_pseudo_cache(
    model: nn.Module,
    items: Sequence[Item],
    out_dir,
    *,
    decode: str = "greedy",
    max_new_tokens: int | None = None,
    batch_size: int = 16,
    shard_size: int = 256,
    description: str = "",
    progress: bool = True,
):
    """Decode every item with `model` (the teacher), score each answer, write shards.

    Layout of `out_dir` (as the logit cache, `distill.cache`): `index.json` (version,
    kind "pseudo_labels", teacher, decode settings, item count, ids hash, one entry per
    shard with its ids and sha256, `complete` once every item is in) and
    `pseudo_00000.jsonl`, ... with one line per item: {"id", "task", "answer", "logprob"}
    (mean token log-probability of the answer under `model`, end token included; -inf
    is written as null). Labels are not needed: an audio-only manifest is valid input.
    Each shard, then the index, is written atomically, so an interrupted run resumes at
    the first missing or corrupt shard; a different request in the same directory is an
    error. Returns the directory (verified).
    """
    import json
    from pathlib import Path

    from distill._shards import add_shard, atomic_json, ids_sha, open_index
    from distill.eval.runner import generate_all

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = [it.id for it in items]
    request = {
        "kind": "pseudo_labels",
        "decode": decode,
        "max_new_tokens": max_new_tokens,
        "num_items": len(items),
        "shard_size": shard_size,
        "ids_sha": ids_sha(ids),
    }
    header = {"version": PSEUDO_VERSION, "teacher": description}
    index_path, index, good = open_index(out, ids, request, header, "pseudo-labels")
    for j in range((len(items) + shard_size - 1) // shard_size):
        name = f"pseudo_{j:05d}.jsonl"
        if name in good:
            continue
        chunk = list(items[j * shard_size : (j + 1) * shard_size])
        texts, _ = generate_all(model, chunk, decode=decode, max_new_tokens=max_new_tokens,
                                batch_size=batch_size, progress=progress)  # fmt: skip
        scores = answer_logprobs(model, chunk, texts, batch_size=batch_size, progress=progress)
        lines = [
            json.dumps({"id": it.id, "task": it.task, "answer": texts[it.id].strip(),
                        "logprob": scores[it.id] if math.isfinite(scores[it.id]) else None})
            for it in chunk
        ]  # fmt: skip
        tmp = out / (name + ".part")
        tmp.write_text("\n".join(lines) + "\n")
        add_shard(index_path, index, tmp, name, [it.id for it in chunk])
    index["complete"] = True
    atomic_json(index_path, index)
    read_pseudo_cache(out)
    return out


def read_pseudo_cache(cache_dir) -> tuple[dict[str, str], dict[str, float]]:
    """(id -> answer, id -> mean log-prob) of a complete, intact pseudo-label cache.

    Raises `distill.cache.CacheError` naming the directory and the problem (incomplete,
    missing or corrupt shard, ids that do not match the index).
    """
    import json
    from pathlib import Path

    from distill._shards import CacheError, check_shards

    root = Path(cache_dir)
    index_path = root / "index.json"
    if not index_path.is_file():
        raise CacheError(f"{root} is not a pseudo-label cache: no index.json")
    index = json.loads(index_path.read_text())
    if index.get("kind") != "pseudo_labels":
        raise CacheError(f"{root} is a teacher-logit cache, not a pseudo-label cache")
    if not index.get("complete"):
        raise CacheError(f"{root} is incomplete: rerun `distill cache --pseudo-labels` to resume")
    answers: dict[str, str] = {}
    logprobs: dict[str, float] = {}
    for shard, path in zip(index["shards"], check_shards(root, index), strict=True):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if [r["id"] for r in rows] != shard["ids"]:
            raise CacheError(f"{root}: shard {shard['file']} lists other ids than index.json")
        for r in rows:
            answers[r["id"]] = r["answer"]
            logprobs[r["id"]] = -math.inf if r["logprob"] is None else float(r["logprob"])
    return answers, logprobs


def write_pseudo_labels(
    items: Sequence[Item],
    cache_dir,
    out_file,
    *,
    max_wer: float = 0.10,
    min_logprob: float | None = None,
) -> tuple[str, FilterStats]:
    """Filter a pseudo-label cache into a training manifest, with its stats beside it.

    An item's own non-empty `text` is its label (the WER rule); items without text use
    the log-prob rule. Writes `out_file` (SALMONN annotation JSON: the kept items with the
    teacher's answers, `"label": "teacher"`) and `<out_file stem>.stats.json` (kept,
    dropped and why, per task, and the thresholds), which the report shows.
    """
    import json
    from pathlib import Path

    from distill.data.annotations import write_annotations

    answers, logprobs = read_pseudo_cache(cache_dir)
    missing = [it.id for it in items if it.id not in answers]
    if missing:
        raise KeyError(f"{cache_dir} has no pseudo-label for {len(missing)} item(s), e.g. "
                       f"{missing[0]!r}")  # fmt: skip
    labels = {it.id: it.text for it in items if it.text.strip()}
    kept, stats = filter_pseudo_labels(items, answers, logprobs, labels=labels,
                                       max_wer=max_wer, min_logprob=min_logprob)  # fmt: skip
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    info = stats.to_dict() | {"max_wer": max_wer, "min_logprob": min_logprob,
                              "cache": str(cache_dir)}  # fmt: skip
    out_file.with_suffix(".stats.json").write_text(json.dumps(info, indent=1) + "\n")
    return write_annotations(kept, out_file), stats


__all__ = [
    "FilterStats",
    "answer_logprobs",
    "build_pseudo_cache",
    "filter_pseudo_labels",
    "read_pseudo_cache",
    "write_pseudo_labels",
]
