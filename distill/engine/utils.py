"""Small helpers of the engine: token counts, hidden-state requirements, accuracy."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.contracts import HIDDEN_FIELDS, AudioBatch, ModelOutputs


def required_hidden(loss: nn.Module) -> tuple[str, ...]:
    """Hidden states the losses need from the student forward.

    A loss module declares them in an attribute `hidden_states` (names from
    `HIDDEN_FIELDS`); nested compositions are searched recursively.
    """
    names: set[str] = set()
    for module in loss.modules():
        for name in getattr(module, "hidden_states", ()) or ():
            if name not in HIDDEN_FIELDS:
                raise ValueError(
                    f"{type(module).__name__}.hidden_states names {name!r}; expected one of {HIDDEN_FIELDS}"
                )
            names.add(name)
    return tuple(sorted(names))


def needs_teacher_logits(loss: nn.Module) -> bool:
    """Whether `loss` reads the teacher's logits.

    A loss module that never does says so with `teacher_logits = False` (CE, CTCAux,
    FeatureMSE, QFormerContrastive; Compose asks its terms). A module that does not say is
    assumed to read them. When none does, a live teacher can skip its LLM and compute only
    the encoder and Q-Former features the losses match.
    """
    return bool(getattr(loss, "teacher_logits", True))


def answer_token_count(model: nn.Module, batch: AudioBatch) -> int | None:
    """Answer tokens (plus end symbol) the model will score on this batch, if it can tell."""
    counter = getattr(model, "count_answer_tokens", None)
    if counter is None:
        return None
    return int(counter(batch))


@torch.no_grad()
def token_accuracy(out: ModelOutputs) -> tuple[Tensor, Tensor, Tensor]:
    """(CE summed over answer tokens, correct argmax count, token count)."""
    logits = out.logits.float()
    mask = out.mask
    ce = F.cross_entropy(logits.transpose(1, 2), out.token_ids, reduction="none")
    ce_sum = (ce * mask).sum()
    correct = ((logits.argmax(-1) == out.token_ids) & mask).sum()
    return ce_sum, correct.float(), mask.sum().float()


def flatten_for_tracker(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a nested config into scalar key/value pairs that trackers accept."""
    out: dict[str, Any] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(flatten_for_tracker(v, f"{prefix}{k}." if prefix or k else ""))
        return out
    key = prefix.rstrip(".")
    if isinstance(tree, (int, float, str, bool)):
        out[key] = tree
    elif tree is None:
        out[key] = "None"
    else:
        out[key] = str(tree)
    return out
