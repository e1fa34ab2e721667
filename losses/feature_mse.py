"""Hidden-state matching: MSE or cosine between student and teacher features.

Glossary: b batch, t / u student / teacher time steps (frames, windows or tokens), d width.

For each chosen field (`qformer`, `speech`, `audio`, `llm_hidden`):
    1. project the student features with a registered Linear(d_s, d_t) when widths differ
       (widths are given in `__init__`, so the layer exists before the optimizer);
    2. when the lengths differ, resample each item's valid student prefix to the teacher's
       valid length by linear interpolation (align_corners=True: first and last frames match);
    3. per teacher position: MSE = mean_d (s - t)^2, or cosine = 1 - cos(s, t);
    4. masked mean over valid teacher positions (masks: `qformer_mask` for qformer, the
       answer `mask` for llm_hidden, all positions for speech/audio).
    loss = sum_field weight_field * term_field
Masks are assumed to be valid prefixes (right padding), as every model here produces.
`llm_hidden` across different tokenizers is resampled the same way (no char alignment).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from distill.contracts import HIDDEN_FIELDS, LossOutput, ModelOutputs, TeacherSignals
from losses._reduce import (
    LossInputError,
    check_finite,
    check_pair,
    check_result,
    masked_mean,
    upcast,
)


def _mask_of(signals, name: str) -> Tensor:
    x = signals.hidden(name)
    if name == "qformer" and signals.qformer_mask is not None:
        return signals.qformer_mask
    if name == "llm_hidden":
        return signals.mask
    return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)


def resample(x: Tensor, x_mask: Tensor, length: int, lengths: Tensor) -> Tensor:
    """Linearly resample each item's valid prefix of x [b, t, d] to `lengths[i]` steps of [b, length, d]."""
    out = x.new_zeros(x.shape[0], length, x.shape[-1])
    valid = x_mask.sum(-1)
    for i in range(x.shape[0]):
        src, dst = int(valid[i]), int(lengths[i])
        if src == 0 or dst == 0:
            continue
        seq = x[i, :src].T.unsqueeze(0)  # [1, d, src]
        if src == dst:
            out[i, :dst] = x[i, :src]
        else:
            mode = dict(mode="linear", align_corners=True) if src > 1 else dict(mode="nearest")
            out[i, :dst] = nn.functional.interpolate(seq, size=dst, **mode)[0].T
    return out


class FeatureMSE(nn.Module):
    """MSE (or cosine) between chosen hidden states, with registered projections.

    Args:
        fields: names from `HIDDEN_FIELDS`, e.g. ("qformer",).
        widths: {field: (student_d, teacher_d)}; a projection is registered where they differ.
        metric: "mse" or "cosine".
        weights: {field: weight}; default 1 each.
    """

    teacher_logits = False  # reads no teacher logits: a teacher may skip its LLM (see
    # distill.engine.utils.needs_teacher_logits)

    def __init__(
        self,
        fields: tuple[str, ...] | list[str] = ("qformer",),
        widths: dict[str, tuple[int, int]] | None = None,
        metric: str = "mse",
        weights: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        unknown = [f for f in fields if f not in HIDDEN_FIELDS]
        if unknown or not fields:
            raise ValueError(
                f"FeatureMSE.fields {list(fields)} must be non-empty names from {HIDDEN_FIELDS}"
            )
        if metric not in ("mse", "cosine"):
            raise ValueError(f"FeatureMSE.metric must be 'mse' or 'cosine', got {metric!r}")
        self.fields, self.metric = tuple(fields), metric
        self.hidden_states = self.fields  # the engine asks the student forward for these
        self.weights = {f: float((weights or {}).get(f, 1.0)) for f in self.fields}
        self.widths = {f: tuple(w) for f, w in (widths or {}).items()}
        self.proj = nn.ModuleDict()
        for f, (ds, dt) in self.widths.items():
            if f not in self.fields:
                raise ValueError(
                    f"FeatureMSE.widths names {f!r}, which is not in fields {self.fields}"
                )
            if ds != dt:
                self.proj[f] = nn.Linear(ds, dt)

    def _term(self, name: str, student: ModelOutputs, teacher: TeacherSignals) -> Tensor:
        s, t = student.hidden(name), teacher.hidden(name)
        if s is None or t is None:
            raise LossInputError(
                f"FeatureMSE needs `{name}` on both student and teacher (ask the model for it)"
            )
        check_finite(f"student.{name}", s)
        check_finite(f"teacher.{name}", t)
        s_mask, t_mask = _mask_of(student, name), _mask_of(teacher, name).to(s.device)
        if name in self.proj:
            s = self.proj[name](s)
        if s.shape[-1] != t.shape[-1]:
            raise LossInputError(
                f"FeatureMSE: {name} widths differ ({s.shape[-1]} vs {t.shape[-1]}); "
                f"pass widths={{'{name}': (student_d, teacher_d)}}"
            )
        s, t = upcast(s), upcast(t).to(s.device)
        if s.shape[1] != t.shape[1] or not torch.equal(s_mask.sum(-1), t_mask.sum(-1)):
            s = resample(s, s_mask, t.shape[1], t_mask.sum(-1))
            valid = t_mask & (s_mask.sum(-1, keepdim=True) > 0)
        else:
            valid = t_mask & s_mask
        if self.metric == "mse":
            per = (s - t).pow(2).mean(-1)
        else:
            per = 1 - nn.functional.cosine_similarity(s, t, dim=-1, eps=1e-8)
        return masked_mean(per, valid)

    def forward(self, student: ModelOutputs, teacher: TeacherSignals) -> LossOutput:
        check_pair(student, teacher, "FeatureMSE")
        metrics, loss = {}, None
        for name in self.fields:
            term = self._term(name, student, teacher)
            metrics[name] = term.detach()
            loss = self.weights[name] * term if loss is None else loss + self.weights[name] * term
        check_result("FeatureMSE loss", loss)
        metrics["loss"] = loss.detach()
        return LossOutput(loss=loss, metrics=metrics)
