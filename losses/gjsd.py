"""Generalized Jensen-Shannon divergence of GKD (Agarwal et al. 2024, "On-Policy Distillation
of Language Models: Learning from Self-Generated Mistakes", eq. 1; TRL `GKDTrainer`).

Glossary: b batch, n student answer tokens, m teacher answer tokens, v vocab,
s shared-vocabulary ids, c chunk length.

With p = softmax(teacher logits / T), q = softmax(student logits / T) at each answer token:

    m         = beta p + (1 - beta) q
    JSD_beta  = beta KL(p || m) + (1 - beta) KL(q || m)          for 0 < beta < 1
    JSD_0     = KL(p || q)   (forward)       JSD_1 = KL(q || p)   (reverse)

    loss = mean over answer tokens of JSD_beta  +  ce_weight * CE(student, answer ids)

The endpoints are defined as TRL defines them, not as the limit of the formula (which is 0
at both ends: JSD_beta ~ beta KL(p || q) as beta -> 0), so beta = 0 and beta = 1 give the two
KL directions at their natural scale. As in TRL, the divergence is not multiplied by T^2
(`TokenKL` does multiply; at T = 1 the two agree: beta 0 is `TokenKL(divergence="forward")`,
beta 1 is `TokenKL(divergence="reverse")`). CE, when weighted, is taken at T = 1.

The mixture is formed in log space, log m = logaddexp(log p + log beta, log q + log(1 - beta)),
so a token whose probability underflows in one model still has a finite log m.

Positions and vocabularies as `TokenKL` (dense teacher logits only):
    same tokenizer: position i pairs with position i, over the first min(v_s, v_t) ids;
    different tokenizers: positions pair by character spans (`losses.align.align_positions`)
    and both distributions are restricted to the shared vocabulary and renormalised there
    (TokenKL's `cross_tokenizer="shared_vocab"`). Sparse top-k teachers are refused.

Normalisation: the shared masked mean (`losses._reduce`): the sum over the answer tokens
paired with the teacher, divided by `student.num_tokens` when set, else by the local count.
Memory: the per-position maths runs over chunks of `chunk_size` positions
(`losses._reduce.chunked`), so no [b, n, v] fp32 softmax is alive at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from distill.contracts import LossOutput, ModelOutputs, TeacherSignals
from losses._reduce import (
    LossInputError,
    check_finite,
    check_pair,
    checks_enabled,
    chunked,
    finish_with_ce,
    masked_mean,
    require_logits,
    require_student_logits,
    require_tokens,
    token_cross_entropy,
    upcast,
)
from losses.align import RULES, align_positions, shared_vocab
from losses.token_kl import _fit_length

# Finite in fp32 and fp64: a -inf log-prob (a masked vocabulary entry) clamped to it keeps
# 0 * (-inf) and (-inf) - (-inf) out of the sums and their gradients.
_LOG_FLOOR = -1.0e30


def generalized_jsd(student_logp: Tensor, teacher_logp: Tensor, beta: float) -> Tensor:
    """Per-position JSD_beta [...] from log-distributions [..., v] (see the module docstring)."""
    lq, lp = student_logp.clamp_min(_LOG_FLOOR), teacher_logp.clamp_min(_LOG_FLOOR)
    if beta == 0.0:
        return (lp.exp() * (lp - lq)).sum(-1)
    if beta == 1.0:
        return (lq.exp() * (lq - lp)).sum(-1)
    log_m = torch.logaddexp(lp + math.log(beta), lq + math.log1p(-beta))
    kl_teacher = (lp.exp() * (lp - log_m)).sum(-1)
    kl_student = (lq.exp() * (lq - log_m)).sum(-1)
    return beta * kl_teacher + (1.0 - beta) * kl_student


@dataclass(frozen=True)
class _Plan:
    """What every chunk shares: across tokenizers, the dense teacher and the shared ids."""

    teacher_logits: Tensor | None  # [b, m, v_t], rows picked per chunk by the alignment
    student_ids: Tensor | None  # [s] student ids of the shared pieces
    teacher_ids: Tensor | None  # [s] teacher ids of the same pieces


class GeneralizedJSD(nn.Module):
    """GKD's generalized JSD between teacher and student on the answer span, plus optional CE.

    Args:
        beta: mixture weight in [0, 1]; 0 is forward KL(p_t || p_s), 1 reverse KL(p_s || p_t),
            0.5 the symmetric JSD (TRL's default).
        temperature: T > 0; both sides' logits are divided by T (no T^2 factor, as in TRL).
        ce_weight: weight of the student's CE on the answer ids (0: pure GKD, as in TRL).
        alignment: "exact" or "end" character-span rule across tokenizers (`losses.align`).
        chunk_size: answer positions per chunk (None: unchunked).

    Inputs: `student.logits` [b, n, v_s]; `teacher.logits` [b, m, v_t] (dense).
    """

    def __init__(
        self,
        beta: float = 0.5,
        temperature: float = 1.0,
        ce_weight: float = 0.0,
        alignment: str = "exact",
        chunk_size: int | None = 8,
    ) -> None:
        super().__init__()
        if not 0.0 <= beta <= 1.0:  # also refuses NaN
            raise ValueError(f"GeneralizedJSD.beta must be in [0, 1], got {beta}")
        if not 0.0 < temperature < math.inf:
            raise ValueError(
                f"GeneralizedJSD.temperature must be > 0 and finite, got {temperature}"
            )
        if alignment not in RULES:
            raise ValueError(f"GeneralizedJSD.alignment must be one of {RULES}, got {alignment!r}")
        self.beta, self.temperature = float(beta), float(temperature)
        self.ce_weight, self.alignment, self.chunk_size = float(ce_weight), alignment, chunk_size

    def _chunk(self, student_logits, teacher_rows, teacher_index, plan: _Plan) -> Tensor:
        """Per-position JSD_beta [b, c] of one chunk (teacher rows, or alignment indices)."""
        T = self.temperature
        x = upcast(student_logits)
        if plan.teacher_logits is None:
            t = teacher_rows.to(x.dtype)
            v = min(t.shape[-1], x.shape[-1])  # a padded vocabulary tail is not a token
            student_logp = torch.log_softmax(x[..., :v] / T, dim=-1)
            teacher_logp = torch.log_softmax(t[..., :v] / T, dim=-1)
        else:
            dense = plan.teacher_logits
            rows = teacher_index.unsqueeze(-1).expand(-1, -1, dense.shape[-1])
            t = dense.gather(1, rows).to(x.dtype)
            student_logp = torch.log_softmax(x.index_select(-1, plan.student_ids) / T, dim=-1)
            teacher_logp = torch.log_softmax(t.index_select(-1, plan.teacher_ids) / T, dim=-1)
        return generalized_jsd(student_logp, teacher_logp, self.beta)

    def _terms(self, student: ModelOutputs, teacher: TeacherSignals) -> tuple[Tensor, Tensor]:
        """Per-token JSD_beta [b, n] (0 where unpaired) and its mask [b, n]."""
        owner = type(self).__name__
        require_logits(teacher, owner)
        check_pair(student, teacher, owner)
        if teacher.is_sparse:
            raise LossInputError(
                f"{owner} needs the teacher's dense logits, but it gave top-k values only; "
                "cache dense logits, or use TokenKL(divergence='jsd', topk_mode='renorm')"
            )
        require_student_logits(student, type(self).__name__)
        check_finite("student.logits", student.logits)
        check_finite("teacher.logits", teacher.logits)
        same = (
            student.tokenizer.same_as(teacher.tokenizer)
            if student.tokenizer is not None and teacher.tokenizer is not None
            else True
        )
        n = student.mask.shape[1]
        if same:
            m = min(n, teacher.mask.shape[1])
            kd_mask = student.mask.clone()
            kd_mask[:, m:] = False
            kd_mask[:, :m] &= teacher.mask[:, :m]
            sliced = (student.logits, _fit_length(teacher.logits, n), None)
            plan = _Plan(None, None, None)
        else:
            index, kd_mask = align_positions(
                student.offsets, student.mask, teacher.offsets, teacher.mask, self.alignment
            )
            dev = student.logits.device
            s_ids, t_ids = (i.to(dev) for i in shared_vocab(student.tokenizer, teacher.tokenizer))
            sliced = (student.logits, None, index)
            plan = _Plan(teacher.logits, s_ids, t_ids)
        jsd = chunked(self._chunk, sliced, chunk_size=self.chunk_size, fixed=(plan,))
        return torch.where(kd_mask, jsd, jsd.new_zeros(())), kd_mask

    # ----------------------------------------------------------------------- public API
    def token_divergence(
        self, student: ModelOutputs, teacher: TeacherSignals
    ) -> tuple[Tensor, Tensor]:
        """Per-token JSD_beta [b, n] and its mask [b, n]; no CE (the `DDAT` protocol)."""
        return self._terms(student, teacher)

    def divergence(self, student: ModelOutputs, teacher: TeacherSignals) -> LossOutput:
        """The divergence term alone, no CE (what `DDAT` mixes with its own CE)."""
        return self._reduce(student, teacher, with_ce=False)

    def forward(self, student: ModelOutputs, teacher: TeacherSignals) -> LossOutput:
        return self._reduce(student, teacher, with_ce=True)

    def _reduce(self, student: ModelOutputs, teacher: TeacherSignals, with_ce: bool) -> LossOutput:
        jsd, kd_mask = self._terms(student, teacher)
        if checks_enabled() and bool(student.mask.any()):
            # answer tokens exist but none pairs with the teacher: a tokenization/alignment bug
            require_tokens(kd_mask, type(self).__name__, "answer tokens aligned with the teacher")
        kd = masked_mean(jsd, kd_mask, student.num_tokens)
        metrics = {
            "kd": kd.detach(),
            "aligned": kd_mask.float().sum() / student.mask.sum().clamp_min(1),
        }
        ce = None
        if with_ce and self.ce_weight != 0.0:
            ce = token_cross_entropy(
                student.logits, student.token_ids, student.mask, self.chunk_size
            )
        return finish_with_ce(type(self).__name__, kd, metrics, ce, self.ce_weight, student)
