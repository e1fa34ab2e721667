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


__all__ = ["FilterStats", "answer_logprobs", "filter_pseudo_labels"]
