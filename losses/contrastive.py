"""Q-Former window contrastive distillation (after Xu et al. 2024), symmetric InfoNCE.

Glossary: b batch, w windows, d width, N valid windows in the batch (both masks True).

Student and teacher Q-Former outputs `qformer` [b, w, d_s] / [b, w, d_t] (window mask
`qformer_mask` [b, w]) are projected (registered Linear layers, widths given in
`__init__`) to a common width, L2-normalised, and every valid student window i is scored
against every valid teacher window j of the batch:
    S_ij = <z_s,i, z_t,j> / tau
    loss = 1/2 [ mean_i CE(S_i., i) + mean_j CE(S_.j, j) ]
The positive of a window is the same window of the same clip; negatives are all other
valid windows of the batch (other windows of the same clip included). Masked windows are
dropped before scoring, so padding changes nothing and an all-masked batch gives 0. The
mean is over the N local valid windows (windows are not answer tokens, so
`num_tokens` does not apply). tau is fixed, or learned as log(1/tau) when `learn_temperature`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from distill.contracts import LossOutput, ModelOutputs, TeacherSignals
from losses._reduce import (
    LossInputError,
    check_finite,
    check_pair,
    check_result,
    touch_parameters,
    upcast,
)


class QFormerContrastive(nn.Module):
    """Symmetric InfoNCE between student and teacher Q-Former windows.

    Args:
        student_dim, teacher_dim: widths of the two Q-Former outputs (None: equal, no projection).
        proj_dim: common width; None uses teacher_dim (student projected onto the teacher).
        temperature: tau (0.07).
        learn_temperature: learn log(1/tau) as a registered parameter.
    """

    teacher_logits = False  # reads no teacher logits: a teacher may skip its LLM (see
    # distill.engine.utils.needs_teacher_logits)

    hidden_states = ("qformer",)  # the engine asks the student forward for these

    def __init__(
        self,
        student_dim: int | None = None,
        teacher_dim: int | None = None,
        proj_dim: int | None = None,
        temperature: float = 0.07,
        learn_temperature: bool = False,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"QFormerContrastive.temperature must be > 0, got {temperature}")
        self.student_proj: nn.Module = nn.Identity()
        self.teacher_proj: nn.Module = nn.Identity()
        if student_dim is not None and teacher_dim is not None:
            target = proj_dim or teacher_dim
            if student_dim != target:
                self.student_proj = nn.Linear(student_dim, target)
            if teacher_dim != target:
                self.teacher_proj = nn.Linear(teacher_dim, target)
        self.dims = (student_dim, teacher_dim)
        scale = torch.tensor(math.log(1.0 / temperature))
        if learn_temperature:
            self.log_scale = nn.Parameter(scale)
        else:
            self.register_buffer("log_scale", scale)

    def forward(self, student: ModelOutputs, teacher: TeacherSignals) -> LossOutput:
        check_pair(student, teacher, "QFormerContrastive")
        if student.qformer is None or teacher.qformer is None:
            raise LossInputError("QFormerContrastive needs `qformer` on both student and teacher")
        s, t = student.qformer, teacher.qformer.to(student.qformer.device)
        if s.shape[1] != t.shape[1]:
            raise LossInputError(
                f"QFormerContrastive: student has {s.shape[1]} windows, teacher {t.shape[1]}; "
                "both must use the same window length and stride"
            )
        for name, x, d in (
            ("student.qformer", s, self.dims[0]),
            ("teacher.qformer", t, self.dims[1]),
        ):
            check_finite(name, x)
            if d is not None and x.shape[-1] != d:
                raise LossInputError(
                    f"QFormerContrastive: {name} width {x.shape[-1]} != configured {d}"
                )
        if isinstance(self.student_proj, nn.Identity) and s.shape[-1] != t.shape[-1]:
            raise LossInputError(
                f"QFormerContrastive: widths differ ({s.shape[-1]} vs {t.shape[-1]}); "
                "pass student_dim and teacher_dim so the projection is registered"
            )
        mask = torch.ones(s.shape[:2], dtype=torch.bool, device=s.device)
        for m in (student.qformer_mask, teacher.qformer_mask):
            if m is not None:
                mask = mask & m.to(s.device)
        z_s = nn.functional.normalize(upcast(self.student_proj(s[mask])), dim=-1)
        z_t = nn.functional.normalize(upcast(self.teacher_proj(t[mask])), dim=-1)
        if z_s.shape[0] == 0:
            loss = touch_parameters(self, upcast(s))  # every parameter used (DDP)
            return LossOutput(loss=loss, metrics={"loss": 0.0, "windows": 0.0})
        scores = z_s @ z_t.T * self.log_scale.exp().to(z_s.dtype)
        target = torch.arange(scores.shape[0], device=scores.device)
        loss = 0.5 * (
            nn.functional.cross_entropy(scores, target)
            + nn.functional.cross_entropy(scores.T, target)
        )
        check_result("QFormerContrastive loss", loss)
        acc = (scores.argmax(-1) == target).float().mean()
        metrics = {"loss": loss.detach(), "accuracy": acc, "windows": float(z_s.shape[0])}
        metrics["temperature"] = torch.exp(-self.log_scale.detach())
        return LossOutput(loss=loss, metrics=metrics)
