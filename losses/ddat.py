"""DDAT: an entropy-driven mix of CE and any divergence loss.

Glossary: b batch, n student answer tokens, m teacher answer tokens, v vocab, k top-k.

The wrapped `kd` module follows a small protocol (`KDTerm`):
    kd.divergence(student, teacher) -> LossOutput        # the KD term alone, no CE
    kd.token_divergence(student, teacher) -> ([b, n], [b, n] mask)   # only for per-token mode
`TokenKL`, `MultiLevelOT` and `ULD` implement `divergence`; `TokenKL` and `ULD` also
implement `token_divergence`.

Batch-EMA mode (the seed team's DDAT), per optimizer step (`on_step`, which the engine
calls once per step):
    h_step = mean teacher entropy H_i (nats, T = 1) over the valid teacher tokens of every
             micro-batch of the step, summed and counted across processes when
             torch.distributed is up (so accumulation and process layout do not change it)
    h = 0.9 * h + 0.1 * h_step    (h = h_step after the first step; a step with no valid
                                   teacher token leaves h and "started" unchanged)
    alpha = base + sigmoid(h - center) * (max - base)       defaults 0.2, 0.4, 2.0
    loss = (1 - alpha) * CE + alpha * KD
Each micro-batch uses the h of the steps before it; before the first `on_step` it uses its
own mean entropy. The EMA and its "started" flag are registered buffers (saved in the state
dict); called outside the engine, call `on_step` after each optimizer step.

Per-token mode: alpha_i = base + (max - base) * H_i / log v, i.e. the teacher entropy is
normalised by its maximum log v (v = teacher vocabulary), and
    loss = sum_i [(1 - alpha_i) CE_i + alpha_i KD_i] / N   (shared masked mean).
Across tokenizers H is taken at the teacher token paired by character span; an unpaired
student token uses alpha_i = base. Sparse teachers: H of the renormalised top-k.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from distill.contracts import LossOutput, ModelOutputs, TeacherSignals
from losses._reduce import (
    LossInputError,
    check_pair,
    check_result,
    chunked,
    masked_mean,
    masked_sum,
    token_cross_entropy,
    upcast,
)
from losses.align import align_positions


@runtime_checkable
class KDTerm(Protocol):
    """What DDAT needs from its `kd` submodule."""

    def divergence(self, student: ModelOutputs, teacher: TeacherSignals) -> LossOutput: ...


def _entropy_chunk(logits: Tensor) -> Tensor:
    lp = torch.log_softmax(upcast(logits), dim=-1)
    return -(lp.exp() * torch.where(torch.isfinite(lp), lp, lp.new_zeros(()))).sum(-1)


def teacher_entropy(teacher: TeacherSignals, chunk_size: int | None = 8) -> Tensor:
    """Per-token predictive entropy [b, m] of the teacher at T = 1 (nats), no gradient."""
    with torch.no_grad():
        if teacher.is_sparse:
            return _entropy_chunk(teacher.topk_values)
        return chunked(_entropy_chunk, (teacher.logits,), chunk_size=chunk_size)


class DDAT(nn.Module):
    """Dynamic alpha between CE and a divergence, set from the teacher's entropy.

    Args:
        kd: a module with `divergence(student, teacher)` (see `KDTerm`).
        mode: "batch_ema" or "per_token".
        base, max, center: alpha = base + sigmoid(h - center) * (max - base).
        momentum: EMA momentum (0.9 keeps 90 % of the old value).
        initial_entropy: h before the first optimizer step; None uses each micro-batch's
            own mean entropy (the seed's rule), a number makes the first step's alpha
            independent of how the global batch is split into micro-batches and ranks.
        chunk_size: positions per chunk for the entropy and the CE.
    """

    def __init__(
        self,
        kd: nn.Module,
        mode: str = "batch_ema",
        base: float = 0.2,
        max: float = 0.4,  # noqa: A002 - the paper's name
        center: float = 2.0,
        momentum: float = 0.9,
        chunk_size: int | None = 8,
        initial_entropy: float | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(kd, KDTerm):
            raise TypeError(
                f"DDAT.kd must have a divergence(student, teacher) method, got {type(kd).__name__}"
            )
        if mode not in ("batch_ema", "per_token"):
            raise ValueError(f"DDAT.mode must be 'batch_ema' or 'per_token', got {mode!r}")
        if mode == "per_token" and not hasattr(kd, "token_divergence"):
            raise TypeError(
                f"DDAT(mode='per_token') needs kd.token_divergence; {type(kd).__name__} has none"
            )
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"DDAT.momentum must be in [0, 1), got {momentum}")
        self.kd, self.mode = kd, mode
        self.base, self.max, self.center = float(base), float(max), float(center)
        self.momentum, self.chunk_size = float(momentum), chunk_size
        self.initial_entropy = None if initial_entropy is None else float(initial_entropy)
        self.register_buffer("entropy_ema", torch.zeros((), dtype=torch.float64))
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))
        # [entropy sum, token count] of this optimizer step's micro-batches (not saved: a
        # checkpoint is written between optimizer steps, when the window is empty)
        self.register_buffer("window", torch.zeros(2, dtype=torch.float64), persistent=False)

    def _batch_entropy(self, entropy: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """This micro-batch's [entropy sum, token count] (float64), and its mean (0 if none)."""
        stats = torch.stack([masked_sum(entropy, mask).double(), mask.sum().double()])
        return stats, stats[0] / stats[1].clamp_min(1)

    def on_step(self, step: int) -> None:
        """Fold this optimizer step's window into the EMA (the engine calls it once per step).

        The window holds every micro-batch of the accumulation window; under
        torch.distributed it is summed over all ranks first, so the EMA sees the mean
        entropy of the whole global batch, whatever the accumulation and process layout. A
        window without teacher tokens leaves the EMA and `started` as they were
        (`torch.where`: no host sync).
        """
        stats = self.window.clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)
        seen = stats[1] > 0
        h = stats[0] / stats[1].clamp_min(1)
        with torch.no_grad():
            ema = torch.where(
                self.started, self.momentum * self.entropy_ema + (1 - self.momentum) * h, h
            )
            self.entropy_ema.copy_(torch.where(seen, ema, self.entropy_ema))
            self.started.copy_(self.started | seen)
            self.window.zero_()

    def forward(self, student: ModelOutputs, teacher: TeacherSignals) -> LossOutput:
        check_pair(student, teacher, "DDAT")
        entropy = teacher_entropy(teacher, self.chunk_size)
        t_mask = teacher.mask.to(entropy.device)
        nt = student.num_tokens
        if student.is_fused:
            return self._fused(student, teacher, entropy, t_mask)
        ce_tok = token_cross_entropy(
            student.logits, student.token_ids, student.mask, self.chunk_size
        )
        if self.mode == "batch_ema":
            # the window is folded into the EMA by `on_step`, once per optimizer step; alpha
            # follows the EMA of the steps before this one; before the first optimizer
            # step there is none, and this micro-batch's own entropy stands in
            alpha, h, h_batch = self._batch_alpha(entropy, t_mask)
            ce = masked_mean(ce_tok, student.mask, nt)
            kd_out = self.kd.divergence(student, teacher)
            alpha_t = alpha.to(ce.dtype)
            loss = (1 - alpha_t) * ce + alpha_t * kd_out.loss
            metrics = {
                "alpha": alpha.detach(),
                "entropy": h.detach(),
                "entropy_batch": h_batch.detach(),
            }
        else:
            kd_tok, _ = self.kd.token_divergence(student, teacher)
            h_tok, h_mask = self._student_aligned(entropy, t_mask, student, teacher)
            alpha_tok = self._token_alpha(h_tok, h_mask, teacher).to(ce_tok.dtype)
            loss = masked_mean((1 - alpha_tok) * ce_tok + alpha_tok * kd_tok, student.mask, nt)
            ce = masked_mean(ce_tok, student.mask, nt)
            kd_out = LossOutput(loss=masked_mean(kd_tok, student.mask, nt))
            metrics = {
                "alpha": masked_mean(alpha_tok.detach(), student.mask),
                "entropy": masked_mean(h_tok.detach(), h_mask),
            }
        check_result("DDAT loss", loss)
        metrics.update({"ce": ce.detach(), "kd": kd_out.loss.detach(), "loss": loss.detach()})
        metrics.update({f"kd/{k}": v for k, v in kd_out.metrics.items() if k != "loss"})
        return LossOutput(loss=loss, metrics=metrics)

    def _batch_alpha(self, entropy: Tensor, t_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Batch-EMA mode: (alpha, h, this micro-batch's h); adds the batch to the window."""
        stats, h_batch = self._batch_entropy(entropy, t_mask)
        if self.training:
            self.window.add_(stats.to(self.window.device))
        h_first = (
            h_batch
            if self.initial_entropy is None
            else torch.full_like(h_batch, self.initial_entropy)
        )
        h = torch.where(self.started, self.entropy_ema, h_first)
        return self.base + torch.sigmoid(h - self.center) * (self.max - self.base), h, h_batch

    def _fused(self, student, teacher, entropy: Tensor, t_mask: Tensor) -> LossOutput:
        """A fused student (hidden states and head): one chunked pass of the kd's
        `fused_loss` with the alphas as weights, the same loss as the materialised path."""
        if not hasattr(self.kd, "fused_loss"):
            raise LossInputError(
                f"DDAT over {type(self.kd).__name__} needs the student's logits; with "
                "train.fused_head: true only DDAT over TokenKL runs fused"
            )
        dtype = upcast(student.llm_hidden[:, :0]).dtype
        if self.mode == "batch_ema":
            alpha, h, h_batch = self._batch_alpha(entropy, t_mask)
            a = alpha.to(dtype).detach()
            metrics = {"alpha": alpha.detach(), "entropy": h.detach(), "entropy_batch": h_batch}
        else:
            h_tok, h_mask = self._student_aligned(entropy, t_mask, student, teacher)
            a = self._token_alpha(h_tok, h_mask, teacher).to(dtype).detach()
            metrics = {
                "alpha": masked_mean(a, student.mask),
                "entropy": masked_mean(h_tok.detach(), h_mask),
            }
        per_token = self.mode == "per_token"
        loss, terms = self.kd.fused_loss(
            student, teacher, ce_scale=1 - a, kd_scale=a, per_token=per_token
        )
        check_result("DDAT loss", loss)
        nt = student.num_tokens
        if per_token:
            kd = masked_mean(terms["kd"] + terms["bridge_ce"], student.mask, nt)
        else:
            kd = masked_mean(terms["kd"], terms["kd_mask"], nt)
            kd = kd + masked_mean(terms["bridge_ce"], student.mask, nt)
        metrics.update(
            {
                "ce": masked_mean(terms["ce"], student.mask, nt),
                "kd": kd,
                "loss": loss.detach(),
            }
        )
        return LossOutput(loss=loss, metrics=metrics)

    def _token_alpha(self, h_tok: Tensor, h_mask: Tensor, teacher: TeacherSignals) -> Tensor:
        norm = math.log(max(int(teacher.vocab_size), 2))
        alpha = self.base + (self.max - self.base) * (h_tok / norm).clamp(0, 1)
        return torch.where(h_mask, alpha, torch.full_like(alpha, self.base))

    def _student_aligned(
        self, entropy: Tensor, t_mask: Tensor, student: ModelOutputs, teacher: TeacherSignals
    ) -> tuple[Tensor, Tensor]:
        """Teacher entropy at each student position [b, n], and where it exists [b, n]."""
        n = student.mask.shape[1]
        same = (
            student.tokenizer is None
            or teacher.tokenizer is None
            or student.tokenizer.same_as(teacher.tokenizer)
        )
        if same:
            m = min(n, entropy.shape[1])
            h = entropy.new_zeros(student.mask.shape)
            ok = torch.zeros_like(student.mask)
            h[:, :m], ok[:, :m] = entropy[:, :m], t_mask[:, :m] & student.mask[:, :m]
            return h, ok
        index, paired = align_positions(student.offsets, student.mask, teacher.offsets, t_mask)
        return entropy.gather(1, index), paired
