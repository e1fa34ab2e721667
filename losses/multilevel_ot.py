"""Multi-level optimal-transport distillation (Cui et al., AAAI 2025) and ULD (Boizard et al. 2024).

Glossary: b batch, n student answer tokens, m teacher answer tokens, v vocab, k kept
probabilities, c chunk length.

MultiLevelOT, following github.com/2018cx/Multi-Level-OT `models/distillation_model.py`:
    1. z = logits / (std_v(logits) + 1e-4)  (unbiased std over the vocabulary, no centring)
    2. p = softmax(z / T)
    3. per sequence, rank vocabulary ids by sum_i p_i over that sequence's valid tokens and
       keep the top k (50) ids: q_i = p_i[ids] sorted by that ranking [b, n, k]. The reference
       ranks over the whole batch, padded rows included; here each sequence ranks its own.
    4. token level (position i with position i, both valid):
           L1_i = sum_k |q_s,ik - q_t,ik|
           LOG_i = KL(softmax(q_t,i) || softmax(q_s,i))
       The reference's log term is the cross-entropy -sum softmax(.) log_softmax(.) of the
       sorted vectors; the KL differs from it by the teacher's entropy, a constant, so the
       gradients match and equal inputs give 0.
    5. sequence level, on every batch item: entropic OT (eps 0.1, 10 log-domain Sinkhorn
       rounds, `losses.sinkhorn`) between the valid student rows q_s,i and teacher rows
       q_t,j with L1 cost and uniform marginals; the term is <P, M> averaged over items.
       (The reference normalises rows then columns of exp(-M / eps) and scales by 1e-4.)
    loss = ce_weight * CE + kd_weight * (l1_weight * L1 + log_weight * LOG + ot_weight * OT)
    with defaults 1, 1.5, 1, 0.1, 0.1 (the reference's CE + 1.5 x (L1 + 0.1 LOG + 0.1 OT)).

ULD: sort each token's probability vector, pad the shorter vocabulary with zeros,
loss = ce_weight * CE + weight * mean_i sum_j |sort(p_s,i)_j - sort(p_t,i)_j| (weight 1.5).

Token-level terms use the shared masked mean (`num_tokens` convention); the OT term is a
mean over the items that have valid tokens on both sides.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from distill.contracts import LossOutput, ModelOutputs, TeacherSignals
from losses._fused_ot import StdTopkProbs, std_topk_forward
from losses._reduce import (
    LossInputError,
    check_finite,
    check_pair,
    check_result,
    chunked,
    finish_with_ce,
    masked_mean,
    require_logits,
    require_student_logits,
    upcast,
)
from losses.sinkhorn import l1_cost, sinkhorn


def sorted_topk_probs(
    logits: Tensor,
    mask: Tensor,
    k: int,
    temperature: float = 1.0,
    chunk_size: int | None = 8,
    targets: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Steps 1-3 above: per-sequence ranked probabilities q [b, n, k] and CE [b, n] (0 without
    targets; without targets and gradients the CE is skipped). Blocked with a closed-form
    backward (`losses._fused_ot`)."""
    if torch.is_grad_enabled() and logits.requires_grad:
        if targets is None:  # the kernel's backward always has a CE slot; it gets zero grad
            targets = torch.zeros(logits.shape[:2], dtype=torch.long, device=logits.device)
        return StdTopkProbs.apply(logits, mask, targets, k, temperature, chunk_size)
    q, ce, *_ = std_topk_forward(logits, mask, targets, k, temperature, chunk_size)
    return q, ce


class MultiLevelOT(nn.Module):
    """Token- and sequence-level OT distillation; see the module docstring for the equations.

    Args:
        topk: k probabilities kept per sequence (50).
        temperature: softmax temperature after std scaling (1).
        ce_weight, kd_weight: CE weight and the outer KD weight (1, 1.5).
        l1_weight, log_weight, ot_weight: inner weights of the three terms (1, 0.1, 0.1).
        eps, iters: Sinkhorn regularisation and rounds (0.1, 10).
        chunk_size: positions per chunk over the full vocabulary.
    """

    def __init__(
        self,
        topk: int = 50,
        temperature: float = 1.0,
        ce_weight: float = 1.0,
        kd_weight: float = 1.5,
        l1_weight: float = 1.0,
        log_weight: float = 0.1,
        ot_weight: float = 0.1,
        eps: float = 0.1,
        iters: int = 10,
        chunk_size: int | None = 8,
    ) -> None:
        super().__init__()
        if topk < 1 or eps <= 0 or iters < 1:
            raise ValueError(
                f"MultiLevelOT needs topk >= 1, eps > 0, iters >= 1; got {topk}, {eps}, {iters}"
            )
        self.topk, self.temperature = int(topk), float(temperature)
        self.ce_weight, self.kd_weight = float(ce_weight), float(kd_weight)
        self.l1_weight, self.log_weight, self.ot_weight = (
            float(l1_weight),
            float(log_weight),
            float(ot_weight),
        )
        self.eps, self.iters, self.chunk_size = float(eps), int(iters), chunk_size

    def _terms(self, student: ModelOutputs, teacher: TeacherSignals) -> dict[str, Tensor]:
        require_logits(teacher, type(self).__name__)
        check_pair(student, teacher, "MultiLevelOT")
        if teacher.is_sparse:
            raise LossInputError(
                "MultiLevelOT needs dense teacher logits (std scaling uses the full vocabulary)"
            )
        require_student_logits(student, type(self).__name__)
        check_finite("student.logits", student.logits)
        check_finite("teacher.logits", teacher.logits)
        q_s, ce = sorted_topk_probs(
            student.logits,
            student.mask,
            self.topk,
            self.temperature,
            self.chunk_size,
            student.token_ids,
        )
        with torch.no_grad():
            q_t, _ = sorted_topk_probs(
                teacher.logits, teacher.mask, self.topk, self.temperature, self.chunk_size
            )
        q_t = q_t.to(q_s.dtype)
        if q_s.shape[-1] != q_t.shape[-1]:  # a vocabulary smaller than k: pad with zero probability
            width = max(q_s.shape[-1], q_t.shape[-1])
            q_s = nn.functional.pad(q_s, (0, width - q_s.shape[-1]))
            q_t = nn.functional.pad(q_t, (0, width - q_t.shape[-1]))
        t_mask = teacher.mask.to(student.mask.device)
        L = min(q_s.shape[1], q_t.shape[1])
        pair = student.mask[:, :L] & t_mask[:, :L]
        l1 = (q_s[:, :L] - q_t[:, :L]).abs().sum(-1)
        lp_s, lp_t = torch.log_softmax(q_s[:, :L], -1), torch.log_softmax(q_t[:, :L], -1)
        log_term = (lp_t.exp() * (lp_t - lp_s)).sum(-1)
        ot, _ = sinkhorn(
            l1_cost(q_s, q_t), student.mask, t_mask, self.eps, self.iters, return_plan=False
        )
        items = student.mask.any(-1) & t_mask.any(-1)
        return {"ce": ce, "l1": l1, "log": log_term, "pair": pair, "ot": ot, "items": items}

    def _reduce(self, terms: dict[str, Tensor], student: ModelOutputs, with_ce: bool) -> LossOutput:
        nt = student.num_tokens
        l1 = masked_mean(terms["l1"], terms["pair"], nt)
        log_term = masked_mean(terms["log"], terms["pair"], nt)
        ot = torch.where(terms["items"], terms["ot"], terms["ot"].new_zeros(())).sum()
        ot = ot / terms["items"].sum().clamp_min(1)
        kd = self.kd_weight * (
            self.l1_weight * l1 + self.log_weight * log_term + self.ot_weight * ot
        )
        metrics = {
            "l1": l1.detach(),
            "log": log_term.detach(),
            "ot": ot.detach(),
            "kd": kd.detach(),
        }
        ce = terms["ce"] if with_ce else None
        return finish_with_ce("MultiLevelOT", kd, metrics, ce, self.ce_weight, student)

    def divergence(self, student: ModelOutputs, teacher: TeacherSignals) -> LossOutput:
        """The KD terms alone (no CE), for `DDAT`."""
        return self._reduce(self._terms(student, teacher), student, with_ce=False)

    def forward(self, student: ModelOutputs, teacher: TeacherSignals) -> LossOutput:
        return self._reduce(self._terms(student, teacher), student, with_ce=True)


def _uld_chunk(s, t, targets, pair, temperature):
    p_s = torch.softmax(upcast(s) / temperature, dim=-1).sort(dim=-1, descending=True).values
    p_t = torch.softmax(upcast(t) / temperature, dim=-1).sort(dim=-1, descending=True).values
    width = max(p_s.shape[-1], p_t.shape[-1])
    p_s = nn.functional.pad(p_s, (0, width - p_s.shape[-1]))
    p_t = nn.functional.pad(p_t.to(p_s.dtype), (0, width - p_t.shape[-1]))
    l1 = torch.where(pair, (p_s - p_t).abs().sum(-1), p_s.new_zeros(()))
    ce = (
        -torch.log_softmax(upcast(s), dim=-1)
        .gather(-1, targets.clamp_min(0).unsqueeze(-1))
        .squeeze(-1)
    )
    return l1, ce


class ULD(nn.Module):
    """Universal Logit Distillation (Boizard et al. 2024): L1 between sorted probability vectors.

    Works across tokenizers without any vocabulary map; position i pairs with position i.

    Args:
        weight: lambda on the L1 term (1.5).
        ce_weight: weight of the student CE (1).
        temperature: softmax temperature (1).
        chunk_size: positions per chunk.
    """

    def __init__(
        self,
        weight: float = 1.5,
        ce_weight: float = 1.0,
        temperature: float = 1.0,
        chunk_size: int | None = 8,
    ) -> None:
        super().__init__()
        self.weight, self.ce_weight = float(weight), float(ce_weight)
        self.temperature, self.chunk_size = float(temperature), chunk_size

    def _terms(
        self, student: ModelOutputs, teacher: TeacherSignals
    ) -> tuple[Tensor, Tensor, Tensor]:
        check_pair(student, teacher, "ULD")
        require_logits(teacher, "ULD")
        if teacher.is_sparse:
            raise LossInputError("ULD needs dense teacher logits (it sorts the full distribution)")
        require_student_logits(student, type(self).__name__)
        check_finite("student.logits", student.logits)
        check_finite("teacher.logits", teacher.logits)
        n, m = student.mask.shape[1], teacher.mask.shape[1]
        t_logits = (
            teacher.logits[:, :n] if m >= n else nn.functional.pad(teacher.logits, (0, 0, 0, n - m))
        )
        t_mask = teacher.mask[:, :n] if m >= n else nn.functional.pad(teacher.mask, (0, n - m))
        pair = student.mask & t_mask.to(student.mask.device)
        l1, ce = chunked(
            _uld_chunk,
            (student.logits, t_logits, student.token_ids, pair),
            chunk_size=self.chunk_size,
            fixed=(self.temperature,),
        )
        return l1, ce, pair

    def divergence(self, student: ModelOutputs, teacher: TeacherSignals) -> LossOutput:
        l1, _, pair = self._terms(student, teacher)
        kd = self.weight * masked_mean(l1, pair, student.num_tokens)
        check_result("ULD loss", kd)
        return LossOutput(loss=kd, metrics={"l1": kd.detach() / self.weight, "loss": kd.detach()})

    def token_divergence(
        self, student: ModelOutputs, teacher: TeacherSignals
    ) -> tuple[Tensor, Tensor]:
        l1, _, pair = self._terms(student, teacher)
        return self.weight * l1, pair

    def forward(self, student: ModelOutputs, teacher: TeacherSignals) -> LossOutput:
        l1, ce, pair = self._terms(student, teacher)
        l1 = masked_mean(l1, pair, student.num_tokens)
        ce = masked_mean(ce, student.mask, student.num_tokens)
        loss = self.ce_weight * ce + self.weight * l1
        check_result("ULD loss", loss)
        return LossOutput(
            loss=loss, metrics={"l1": l1.detach(), "ce": ce.detach(), "loss": loss.detach()}
        )
