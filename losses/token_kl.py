"""Token-level KL distillation (Hinton et al. 2015) on the answer span, chunked over the sequence.

Glossary: b batch, n student answer tokens, m teacher answer tokens, v vocab, k top-k,
s shared-vocabulary ids, c chunk length.

    loss = ce_weight * CE(student, answer ids) + kd_weight * T^2 * mean_i D(p_t,i^T || p_s,i^T)

with p^T = softmax(logits / T) and D one of (all sums over the vocabulary support):
    forward    KL(p_t || p_s) = sum p_t (log p_t - log p_s)
    reverse    KL(p_s || p_t)
    symmetric  beta * forward + (1 - beta) * reverse
    jsd        beta * KL(p_t || m) + (1 - beta) * KL(p_s || m),  m = beta p_t + (1 - beta) p_s
    skew       KL(p_t || a p_t + (1 - a) p_s),  a = skew  (Ko et al. 2024, DistiLLM)

Positions: with the same tokenizer (equal fingerprints) position i pairs with position i.
With different tokenizers tokens pair by character spans (`losses.align`), then either
(a) `cross_tokenizer="shared_vocab"`: both distributions are restricted to the shared
vocabulary (pieces equal) and renormalised there; or (b) `"bridge"`: a registered,
trainable map teacher_v -> student_v (`nn.Linear`, or two factors when `bridge_rank` is
set) turns the teacher's probabilities into student-vocabulary logits. The bridge is
trained only by its own CE against the student's answer ids (`bridge_ce_weight`); the KD
term uses its output detached, so the bridge cannot collapse onto the student.

Sparse top-k teachers: `topk_mode="renorm"` restricts both distributions to the k ids and
renormalises; `"tail"` adds one bucket for the mass outside the k ids, taken from
`TeacherSignals.logsumexp` (exact at T = 1; at T != 1 the teacher's tail mass is spread
evenly over the v - k ids before tempering, an approximation). Cross-tokenizer paths use
renorm only.

Memory: everything runs over chunks of `chunk_size` answer positions, so no [b, n, v] fp32
softmax is alive at once. The forward KL with a dense same-vocabulary teacher (the common
case) uses a closed-form backward (`losses._fused_kl`); every other combination uses the
generic recompute-per-chunk wrapper `losses._reduce.chunked`. `python -m losses.bench`
measures both memory and time against a naive full-softmax KL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from distill.contracts import LossOutput, ModelOutputs, TeacherSignals
from losses._fused_head import linear_terms
from losses._fused_kl import FusedForwardKL, forward_kl_ce_grad
from losses._reduce import (
    LossInputError,
    check_finite,
    check_pair,
    check_result,
    checks_enabled,
    chunked,
    denominator,
    finish_with_ce,
    masked_mean,
    require_logits,
    require_tokens,
    upcast,
    xlogy_diff,
)
from losses.align import align_positions, shared_vocab, teacher_to_student_lookup

DIVERGENCES = ("forward", "reverse", "symmetric", "jsd", "skew")


def divergence(
    lp_s: Tensor, lp_t: Tensor, kind: str = "forward", beta: float = 0.5, skew: float = 0.1
) -> Tensor:
    """Per-position divergence [...] between log-distributions lp_s, lp_t [..., v] (see module doc)."""
    tiny = torch.finfo(lp_s.dtype).tiny
    if kind == "forward":  # the hot path: no student exp, one clamp instead of a where
        lo = -1.0e30  # finite in fp32 and fp64; keeps 0 * (-inf) out
        return (lp_t.exp() * (lp_t.clamp_min(lo) - lp_s.clamp_min(lo))).sum(-1)
    p_s, p_t = lp_s.exp(), lp_t.exp()
    if kind == "reverse":
        return xlogy_diff(p_s, lp_s, lp_t).sum(-1)
    if kind == "symmetric":
        fwd = xlogy_diff(p_t, lp_t, lp_s).sum(-1)
        return beta * fwd + (1 - beta) * xlogy_diff(p_s, lp_s, lp_t).sum(-1)
    if kind == "jsd":
        log_m = torch.log((beta * p_t + (1 - beta) * p_s).clamp_min(tiny))
        return beta * xlogy_diff(p_t, lp_t, log_m).sum(-1) + (1 - beta) * xlogy_diff(
            p_s, lp_s, log_m
        ).sum(-1)
    if kind == "skew":
        log_m = torch.log((skew * p_t + (1 - skew) * p_s).clamp_min(tiny))
        return xlogy_diff(p_t, lp_t, log_m).sum(-1)
    raise LossInputError(f"divergence {kind!r} unknown; expected one of {DIVERGENCES}")


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x <= 0, clamped so a full top-k gives a tiny tail, not -inf."""
    return torch.log(-torch.expm1(x.clamp(max=-1e-12)))


@dataclass(frozen=True)
class _Plan:
    """What every chunk of `TokenKL._chunk` shares (see `_terms`)."""

    mode: str  # same_dense | same_sparse | shared_dense | shared_sparse | bridge
    t_dense: Tensor | None  # dense teacher logits [b, m, v_t] picked by t_index (across tokenizers)
    sv_ids: Tensor | None  # shared_vocab: student ids of the shared strings
    tv_ids: Tensor | None  # shared_vocab: teacher ids of the same strings
    lookup: Tensor | None  # shared_vocab: teacher id -> student id (-1 when not shared)
    teacher_v: int  # the teacher's full vocabulary size


class TokenKL(nn.Module):
    """Answer-span KL (or reverse / symmetric / JSD / skew) distillation plus student CE.

    Args:
        temperature: T; logits are divided by T and the KD term multiplied by T^2.
        ce_weight: weight of the student's CE on the answer ids (0 for KD only).
        kd_weight: weight of the KD term.
        divergence: one of `DIVERGENCES`.
        beta: mix weight for "symmetric" and "jsd" (0.5 = the symmetric JSD).
        skew: a for "skew" KL.
        topk_mode: "renorm" or "tail" for sparse top-k teachers.
        cross_tokenizer: "shared_vocab" or "bridge" when the tokenizers differ.
        alignment: "exact" or "end" character-span rule (`losses.align`).
        bridge_vocab: (teacher_v, student_v); required for the bridge, so it exists before
            the optimizer is built.
        bridge_rank: None for a full Linear, else r for Linear(teacher_v, r) -> Linear(r, student_v).
        bridge_ce_weight: weight of the bridge's own CE.
        chunk_size: answer positions per chunk (None: unchunked).
    """

    def __init__(
        self,
        temperature: float = 2.0,
        ce_weight: float = 1.0,
        kd_weight: float = 1.0,
        divergence: str = "forward",
        beta: float = 0.5,
        skew: float = 0.1,
        topk_mode: str = "renorm",
        cross_tokenizer: str = "shared_vocab",
        alignment: str = "exact",
        bridge_vocab: tuple[int, int] | None = None,
        bridge_rank: int | None = None,
        bridge_ce_weight: float = 1.0,
        chunk_size: int | None = 8,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"TokenKL.temperature must be > 0, got {temperature}")
        if divergence not in DIVERGENCES:
            raise ValueError(
                f"TokenKL.divergence {divergence!r} unknown; expected one of {DIVERGENCES}"
            )
        if topk_mode not in ("renorm", "tail"):
            raise ValueError(f"TokenKL.topk_mode must be 'renorm' or 'tail', got {topk_mode!r}")
        if cross_tokenizer not in ("shared_vocab", "bridge"):
            raise ValueError(
                f"TokenKL.cross_tokenizer must be 'shared_vocab' or 'bridge', got {cross_tokenizer!r}"
            )
        self.temperature, self.ce_weight, self.kd_weight = (
            float(temperature),
            float(ce_weight),
            float(kd_weight),
        )
        self.kind, self.beta, self.skew = divergence, float(beta), float(skew)
        self.topk_mode, self.cross_tokenizer, self.alignment = topk_mode, cross_tokenizer, alignment
        self.bridge_ce_weight, self.chunk_size = float(bridge_ce_weight), chunk_size
        self.bridge: nn.Module | None = None
        if cross_tokenizer == "bridge":
            if bridge_vocab is None:
                raise ValueError(
                    "TokenKL(cross_tokenizer='bridge') needs bridge_vocab=(teacher_v, student_v)"
                )
            tv, sv = bridge_vocab
            if bridge_rank is None:
                self.bridge = nn.Linear(tv, sv)
            else:
                self.bridge = nn.Sequential(
                    nn.Linear(tv, bridge_rank, bias=False), nn.Linear(bridge_rank, sv)
                )

    # ----------------------------------------------------------------- per-position maths
    def _chunk(self, s_logits, targets, s_mask, t_a, t_b, t_c, t_index, plan: _Plan, bridge):
        """Per-position (kd, ce, bridge_ce), each [b, c], of one chunk of positions.

        Sliced to the chunk: the student's logits, targets and mask; the teacher's rows
        (t_a values or dense logits, t_b top-k ids, t_c log-sum-exp) and, across tokenizers,
        t_index (the teacher row of each student position). `plan` holds what every chunk
        shares; `bridge` stays a separate argument so that `chunked` gives it gradients.
        """
        mode, t_dense, teacher_v = plan.mode, plan.t_dense, plan.teacher_v
        sv_ids, tv_ids, lookup = plan.sv_ids, plan.tv_ids, plan.lookup
        T = self.temperature
        x = upcast(s_logits)
        lp_s_full = torch.log_softmax(x / T, dim=-1)
        if T == 1.0:
            ce = -lp_s_full.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        else:  # fused log-softmax + gather, cheaper than a second log_softmax
            ce = nn.functional.cross_entropy(
                x.flatten(0, 1), targets.clamp_min(0).flatten(), reduction="none"
            ).view_as(targets)
        zero = ce.new_zeros(())
        if t_dense is not None:  # dense teacher rows picked by the alignment
            t_a = t_dense.gather(1, t_index.unsqueeze(-1).expand(-1, -1, t_dense.shape[-1]))
        bridge_ce = torch.zeros_like(ce)
        if mode == "same_dense":
            t = t_a.to(x.dtype)
            v = min(t.shape[-1], x.shape[-1])
            lp_t = torch.log_softmax(t[..., :v] / T, dim=-1)
            lp_s = lp_s_full if v == x.shape[-1] else torch.log_softmax(x[..., :v] / T, dim=-1)
        elif mode == "same_sparse":
            vals, idx = t_a.to(x.dtype), t_b
            s_k = lp_s_full.gather(-1, idx)
            if self.topk_mode == "renorm":
                lp_t = torch.log_softmax(vals / T, dim=-1)
                lp_s = s_k - torch.logsumexp(s_k, dim=-1, keepdim=True)
            else:
                lp_t = self._teacher_tail(vals, t_c.to(x.dtype), x.new_tensor(float(teacher_v)))
                s_tail = _log1mexp(torch.logsumexp(s_k, dim=-1, keepdim=True))
                lp_s = torch.cat([s_k, s_tail], dim=-1)
        elif mode == "shared_dense":
            lp_t = torch.log_softmax(t_a.to(x.dtype).index_select(-1, tv_ids) / T, dim=-1)
            lp_s = torch.log_softmax(x.index_select(-1, sv_ids) / T, dim=-1)
        elif mode == "shared_sparse":
            mapped = lookup[t_b]
            keep = mapped >= 0
            keep = keep | ~keep.any(-1, keepdim=True)  # rows with no shared id are unpaired anyway
            lp_t = torch.log_softmax(torch.where(keep, t_a.to(x.dtype), -math.inf) / T, dim=-1)
            s_k = torch.where(keep, (x / T).gather(-1, mapped.clamp_min(0)), -math.inf)
            lp_s = s_k - torch.logsumexp(s_k, dim=-1, keepdim=True)
        else:  # bridge: teacher probabilities (T = 1) -> student-vocabulary logits
            if t_dense is not None:
                p_t = torch.softmax(t_a.to(x.dtype), dim=-1)
            else:
                p_t = torch.zeros(*t_a.shape[:2], teacher_v, dtype=x.dtype, device=x.device)
                p_t = p_t.scatter(-1, t_b, torch.softmax(t_a.to(x.dtype), dim=-1))
            bridged = bridge(p_t.to(bridge_dtype(bridge)))
            bridged = upcast(bridged)
            lp_b = torch.log_softmax(bridged, dim=-1)
            bridge_ce = -lp_b.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
            lp_t = torch.log_softmax(bridged.detach() / T, dim=-1)
            lp_s = lp_s_full
        kd = divergence(lp_s, lp_t, self.kind, self.beta, self.skew)
        ce = torch.where(s_mask, ce, zero)
        return kd, ce, torch.where(s_mask, bridge_ce, zero)

    def _teacher_tail(self, vals: Tensor, lse: Tensor, v: Tensor) -> Tensor:
        """Teacher log-probs [.., k + 1] over the top-k ids plus one tail bucket."""
        T, k = self.temperature, vals.shape[-1]
        lse = lse.unsqueeze(-1)
        log_tail = _log1mexp(torch.logsumexp(vals - lse, dim=-1, keepdim=True))
        log_rest = (v - k).clamp_min(1).log()
        tail_logit = lse + log_tail - log_rest  # one of the v - k evenly spread tail logits
        joint = torch.cat([vals / T, tail_logit / T + log_rest], dim=-1)
        return joint - torch.logsumexp(joint, dim=-1, keepdim=True)

    def _prepare(self, student: ModelOutputs, teacher: TeacherSignals):
        """The teacher rows each student position reads, the KD mask and the chunks' plan.

        Returns (kd_mask [b, n], (t_a, t_b, t_c, t_index), plan): everything but the
        student's logits, so the fused path (`fused_loss`) and the materialised path share it.
        """
        require_logits(teacher, type(self).__name__)
        check_pair(student, teacher, type(self).__name__)
        if not student.is_fused:
            check_finite("student.logits", student.logits)
        check_finite(
            "teacher.logits" if teacher.logits is not None else "teacher.topk_values",
            teacher.logits if teacher.logits is not None else teacher.topk_values,
        )
        same = (
            student.tokenizer.same_as(teacher.tokenizer)
            if student.tokenizer is not None and teacher.tokenizer is not None
            else True
        )
        b, n = student.mask.shape
        t_a = t_b = t_c = t_index = t_dense = None
        sv_ids = tv_ids = lookup = None
        if same:
            m = teacher.mask.shape[1]
            kd_mask = student.mask.clone()
            kd_mask[:, m:] = False
            kd_mask[:, : min(n, m)] &= teacher.mask[:, : min(n, m)]
            fields = (
                [teacher.logits]
                if not teacher.is_sparse
                else [teacher.topk_values, teacher.topk_indices, teacher.logsumexp]
            )
            fields = [None if f is None else _fit_length(f, n) for f in fields]
            if teacher.is_sparse:
                if self.topk_mode == "tail" and teacher.logsumexp is None:
                    raise LossInputError("TokenKL(topk_mode='tail') needs TeacherSignals.logsumexp")
                mode, (t_a, t_b, t_c) = "same_sparse", fields
            else:
                mode, (t_a,) = "same_dense", fields
        else:
            if student.offsets is None or teacher.offsets is None:
                raise LossInputError(
                    "TokenKL across tokenizers needs offsets on both student and teacher"
                )
            t_index, kd_mask = align_positions(
                student.offsets, student.mask, teacher.offsets, teacher.mask, self.alignment
            )
            dev = student.mask.device
            if self.cross_tokenizer == "shared_vocab":
                sv_ids, tv_ids = (
                    i.to(dev) for i in shared_vocab(student.tokenizer, teacher.tokenizer)
                )
                lookup = teacher_to_student_lookup(student.tokenizer, teacher.tokenizer).to(dev)
            if teacher.is_sparse and self.topk_mode == "tail":
                raise LossInputError(
                    "TokenKL: topk_mode='tail' needs the same tokenizer; use 'renorm'"
                )
            if teacher.is_sparse:
                rows = t_index.unsqueeze(-1).expand(-1, -1, teacher.topk_values.shape[-1])
                t_a, t_b = teacher.topk_values.gather(1, rows), teacher.topk_indices.gather(1, rows)
                if lookup is not None:
                    kd_mask = kd_mask & (lookup[t_b] >= 0).any(-1)
            else:
                t_dense = teacher.logits
            mode = ("shared_" if self.cross_tokenizer == "shared_vocab" else "bridge_") + (
                "sparse" if teacher.is_sparse else "dense"
            )
            if mode.startswith("bridge"):
                mode = "bridge"
        plan = _Plan(mode, t_dense, sv_ids, tv_ids, lookup, int(teacher.vocab_size))
        return kd_mask, (t_a, t_b, t_c, t_index), plan

    def _terms(self, student: ModelOutputs, teacher: TeacherSignals) -> dict[str, Tensor]:
        """Per-token kd [b, n] (weighted, T^2-scaled), ce [b, n], bridge_ce [b, n], kd_mask [b, n]."""
        if student.is_fused:
            raise LossInputError(
                "TokenKL.token_divergence needs the student's logits; a fused student "
                "(train.fused_head: true) goes through TokenKL.fused_loss"
            )
        kd_mask, (t_a, t_b, t_c, t_index), plan = self._prepare(student, teacher)
        closed_form = (
            plan.mode == "same_dense"
            and self.kind == "forward"
            and self.chunk_size is not None
            and t_a.shape[-1] == student.logits.shape[-1]
        )
        if closed_form:  # closed-form backward, no recomputation (see losses._fused_kl)
            kd, ce = FusedForwardKL.apply(
                student.logits, t_a, student.token_ids, self.temperature, self.chunk_size
            )
            ce = torch.where(student.mask, ce, ce.new_zeros(()))
            bridge_ce = torch.zeros_like(ce)
        else:
            kd, ce, bridge_ce = chunked(
                self._chunk,
                (student.logits, student.token_ids, student.mask, t_a, t_b, t_c, t_index),
                chunk_size=self.chunk_size,
                fixed=(plan, self.bridge),
            )
        kd = torch.where(kd_mask, kd, kd.new_zeros(())) * (self.kd_weight * self.temperature**2)
        return {
            "kd": kd,
            "ce": ce,
            "bridge_ce": bridge_ce * self.bridge_ce_weight,
            "kd_mask": kd_mask,
        }

    def fused_loss(
        self,
        student: ModelOutputs,
        teacher: TeacherSignals,
        ce_scale: Tensor | float,
        kd_scale: Tensor | float = 1.0,
        per_token: bool = False,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of a fused student (hidden states and head, no logits), chunk by chunk.

            loss = sum_i ce_scale_i ce_i / N + sum_i kd_scale_i kd_i / N_kd
                   + sum_i kd_scale_i bridge_ce_i / N

        with kd_i the weighted, T^2-scaled divergence (0 off the KD mask), N the shared
        denominator (`num_tokens`, else the answer mask's count) and N_kd the same with the
        KD mask's count (as `divergence` averages), or N when `per_token` (as a mean of
        `token_divergence` over the answer mask, DDAT's per-token mode). `forward` is
        ce_scale = ce_weight, kd_scale = 1; DDAT passes its (detached) alphas.
        `losses._fused_head` computes it without [b, n, v]. Returns the loss and the
        detached per-token terms.
        """
        kd_mask, (t_a, t_b, t_c, t_index), plan = self._prepare(student, teacher)
        mask = student.mask
        dtype = upcast(student.llm_hidden[:, :0]).dtype  # the weights at the loss's precision
        den = denominator(mask, student.num_tokens)
        den_kd = den if per_token else denominator(kd_mask, student.num_tokens)
        m, kd_m = mask.to(dtype), kd_mask.to(dtype)
        kd_w = kd_m * (kd_scale * (self.kd_weight * self.temperature**2)) / den_kd
        ce_w = m * ce_scale / den
        br_w = None if self.bridge is None else m * (kd_scale * self.bridge_ce_weight) / den
        grad_fn = None
        if (
            plan.mode == "same_dense"
            and self.kind == "forward"
            and t_a.shape[-1] == student.vocab_size
        ):  # the common case in closed form (losses._fused_kl)
            T = self.temperature

            def grad_fn(logits, w, targets, _mask, t_rows, *_, out=None):
                (kd, ce), g = forward_kl_ce_grad(logits, w, targets, t_rows, T, out=out)
                return (kd, ce, torch.zeros_like(kd)), g

        loss, (kd, ce, bridge_ce) = linear_terms(
            self._chunk,
            student.llm_hidden,
            student.head,
            (student.token_ids, mask, t_a, t_b, t_c, t_index),
            (kd_w, ce_w, br_w),
            chunk_size=self.chunk_size,
            fixed=(plan, self.bridge),
            grad_fn=grad_fn,
        )
        ce = torch.where(mask, ce, ce.new_zeros(()))
        zero = kd.new_zeros(())
        kd = torch.where(kd_mask, kd, zero) * (self.kd_weight * self.temperature**2)
        terms = {
            "kd": kd,
            "ce": ce,
            "bridge_ce": torch.where(mask, bridge_ce, zero) * self.bridge_ce_weight,
            "kd_mask": kd_mask,
        }
        return loss, terms

    def _fused_output(self, student, teacher, with_ce: bool) -> LossOutput:
        loss, terms = self.fused_loss(student, teacher, self.ce_weight if with_ce else 0.0)
        nt = student.num_tokens
        metrics = {
            "kd": masked_mean(terms["kd"], terms["kd_mask"], nt),
            "aligned": terms["kd_mask"].float().sum() / student.mask.sum().clamp_min(1),
        }
        if self.bridge is not None:
            metrics["bridge_ce"] = masked_mean(terms["bridge_ce"], student.mask, nt)
        if with_ce:
            metrics["ce"] = masked_mean(terms["ce"], student.mask, nt)
        check_result("TokenKL loss", loss)
        metrics["loss"] = loss.detach()
        return LossOutput(loss=loss, metrics=metrics)

    # ----------------------------------------------------------------------- public API
    def token_divergence(
        self, student: ModelOutputs, teacher: TeacherSignals
    ) -> tuple[Tensor, Tensor]:
        """Per-token KD term [b, n] (weighted, plus the bridge CE) and its mask [b, n]; no CE."""
        terms = self._terms(student, teacher)
        return terms["kd"] + terms["bridge_ce"], terms["kd_mask"]

    def divergence(self, student: ModelOutputs, teacher: TeacherSignals) -> LossOutput:
        """The KD term alone (no CE): what `DDAT` mixes with its own CE."""
        if student.is_fused:
            return self._fused_output(student, teacher, with_ce=False)
        out = self._reduce(self._terms(student, teacher), student, with_ce=False)
        return out

    def forward(self, student: ModelOutputs, teacher: TeacherSignals) -> LossOutput:
        if student.is_fused:
            return self._fused_output(student, teacher, with_ce=True)
        return self._reduce(self._terms(student, teacher), student, with_ce=True)

    def _reduce(self, terms: dict[str, Tensor], student: ModelOutputs, with_ce: bool) -> LossOutput:
        nt = student.num_tokens
        if self.kd_weight != 0 and checks_enabled() and bool(student.mask.any()):
            # answer tokens exist but none pairs with the teacher: a tokenization/alignment bug
            require_tokens(terms["kd_mask"], "TokenKL", "answer tokens aligned with the teacher")
        kd = masked_mean(terms["kd"], terms["kd_mask"], nt)
        bridge_ce = masked_mean(terms["bridge_ce"], student.mask, nt)
        loss = kd + bridge_ce
        metrics = {
            "kd": kd.detach(),
            "aligned": terms["kd_mask"].float().sum() / student.mask.sum().clamp_min(1),
        }
        if self.bridge is not None:
            metrics["bridge_ce"] = bridge_ce.detach()
        ce = terms["ce"] if with_ce else None
        return finish_with_ce("TokenKL", loss, metrics, ce, self.ce_weight, student)


def bridge_dtype(bridge: nn.Module) -> torch.dtype:
    return next(bridge.parameters()).dtype


def _fit_length(x: Tensor, n: int) -> Tensor:
    """Slice (a view) or zero-pad teacher tensor x [b, m, ...] to n positions."""
    if x.shape[1] >= n:
        return x[:, :n]
    pad = x.new_zeros(x.shape[0], n - x.shape[1], *x.shape[2:])
    return torch.cat([x, pad], dim=1)
