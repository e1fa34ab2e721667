"""AdamW parameter groups and the warm-up + cosine schedule (SALMONN's recipe).

No weight decay on 1-D parameters, biases and norms. Parameter groups may carry
their own learning-rate multiplier, chosen by name prefix (e.g. a faster encoder).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import nn


def no_decay(name: str, param: torch.Tensor) -> bool:
    """1-D tensors (norm scales, biases), and anything named like a norm or bias."""
    lowered = name.lower()
    return param.ndim < 2 or lowered.endswith(".bias") or "norm" in lowered or "ln_" in lowered


def param_groups(
    named: Iterable[tuple[str, nn.Parameter]],
    *,
    lr: float,
    weight_decay: float,
    lr_multipliers: Mapping[str, float] | None = None,
) -> list[dict]:
    """Split trainable parameters into AdamW groups.

    Args:
        named: (name, parameter) pairs; frozen ones are skipped.
        lr: base learning rate.
        weight_decay: decay for matrices; 1-D/bias/norm parameters get 0.
        lr_multipliers: name prefix -> multiplier of `lr`; the longest matching prefix wins.
            The trainer names parameters `student.<name>` and `loss.<name>` (for example
            `student.speech_Qformer` or `student.llama_model`).

    Returns:
        AdamW parameter groups, each with "name", "params", "lr" and "weight_decay".

    Raises:
        ValueError: a multiplier prefix that names no trainable parameter (a typo, or a
            name without its `student.` prefix, would otherwise change nothing, silently).
    """
    lr_multipliers = dict(lr_multipliers or {})
    buckets: dict[tuple[float, bool], list] = {}
    used: set[str] = set()  # the prefixes that set some trainable parameter's lr
    matched: set[str] = set()  # ... or matched one, maybe under a longer prefix
    frozen: set[str] = set()
    trainable: list[str] = []
    for name, param in named:
        matches = [p for p in lr_multipliers if name.startswith(p)]
        if not param.requires_grad:
            frozen.update(matches)
            continue
        trainable.append(name)
        matched.update(matches)
        best = max(matches, key=len) if matches else None
        if best is not None:
            used.add(best)
        mult = 1.0 if best is None else lr_multipliers[best]
        buckets.setdefault((mult, no_decay(name, param)), []).append(param)
    unused = [p for p in lr_multipliers if p not in used]
    if unused:
        tops = list(dict.fromkeys(".".join(n.split(".")[:2]) for n in trainable))
        why = {
            p: "is overridden by a longer prefix on every parameter it names" if p in matched
            else "names only frozen parameters" if p in frozen
            else "names no parameter"
            for p in unused
        }  # fmt: skip
        raise ValueError(
            "optim.lr_multipliers: "
            + "; ".join(f"{p!r} {w}" for p, w in why.items())
            + ". Trainable parameters start with: "
            + ", ".join(tops[:12])
            + (" ..." if len(tops) > 12 else "")
        )
    groups = []
    for (mult, nd), params in sorted(buckets.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        groups.append(
            {
                "name": f"lr_x{mult:g}" + ("_no_decay" if nd else ""),
                "params": params,
                "lr": lr * mult,
                "weight_decay": 0.0 if nd else weight_decay,
            }
        )
    if not groups:
        raise ValueError("no trainable parameters: the student and the losses are all frozen")
    return groups


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up from ~0 to 1, then cosine decay to `min_ratio`.

    Not transformers' `get_cosine_with_min_lr_schedule_with_warmup`: that one warms up as
    step / warmup, so the first optimizer step runs at lr 0 and is lost; here it is
    (step + 1) / warmup. Switching would move every published figure by a step.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(
    groups: list[dict], *, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
) -> torch.optim.AdamW:
    return torch.optim.AdamW(groups, betas=betas, eps=eps)


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int, min_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    def fn(step: int) -> float:
        return warmup_cosine(
            step, warmup_steps=warmup_steps, total_steps=total_steps, min_ratio=min_ratio
        )

    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
