"""Shared numerics for every loss: masked mean, finiteness checks, sequence chunking.

Glossary of shape letters (as in `distill.contracts`):
    b  batch items   n  answer tokens   v  vocabulary   k  top-k kept logits   c  chunk length

Normalisation convention (used by every token-level term):
    loss = sum over valid tokens of the per-token value / denominator, where the
    denominator is `student.num_tokens` when the engine set it (the global answer-token
    count of the optimizer step divided by the number of processes), else the local count
    of valid tokens clamped to >= 1. With `num_tokens` set, summing micro-batch losses and
    averaging gradients over processes gives exactly the mean over every token of the step;
    without it, an all-masked batch gives 0 rather than NaN.

Input checks (`check_finite`, `check_result`, `require_tokens` and the losses' own value
checks) read tensor values, which waits on the device: they follow `distill.checks`
(on by default; the engine turns them off on its hot path unless `train.debug_checks`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from distill.checks import checks_enabled
from distill.contracts import LossOutput, ModelOutputs, TeacherSignals
from distill.errors import DistillError


class LossInputError(DistillError, ValueError):
    """The student outputs and teacher signals handed to a loss do not fit together."""


def require_logits(teacher, owner: str) -> None:
    """A clear error for a token loss given features-only teacher signals."""
    if teacher is not None and not teacher.has_logits:
        raise LossInputError(
            f"{owner} reads the teacher's logits, but the teacher gave features only "
            "(AudioLLMTeacher(logits=False)); give it logits=True"
        )


def require_student_logits(student, owner: str) -> None:
    """A clear error for a loss that needs the student's [b, n, v] logits and has none."""
    if student.logits is not None:
        return
    if getattr(student, "head", None) is not None:
        raise LossInputError(
            f"{owner} needs the student's logits, but the student ran fused (train.fused_head: "
            "true gives hidden states and the head only); CE, TokenKL and DDAT over TokenKL "
            "compute from those. Set train.fused_head: false for this loss"
        )
    raise LossInputError(f"{owner} needs the student's logits; the student gave features only")


class NonFiniteError(FloatingPointError):
    """A loss input or result contains NaN or +inf."""


def upcast(x: Tensor) -> Tensor:
    """At least fp32: half/bf16 go to fp32, fp64 stays fp64 (so gradcheck stays exact)."""
    return x if x.dtype == torch.float64 else x.float()


def touch_parameters(module: torch.nn.Module, like: Tensor) -> Tensor:
    """A zero that depends on every trainable parameter of `module` (a loss's own heads).

    For a loss's "nothing to score in this batch" path: under DDP every process must use
    every parameter in each backward, or their gradient all-reduces fall out of step (a
    rank whose batch holds no ASR item left the CTC head's bias without a gradient and the
    two processes' collectives mismatched).
    """
    zero = like.sum() * 0.0
    for p in module.parameters():
        if p.requires_grad:
            zero = zero + p.sum().to(zero.dtype) * 0.0
    return zero


def masked_sum(values: Tensor, mask: Tensor) -> Tensor:
    """Sum of `values` [b, n] where `mask` [b, n] is True; masked entries never propagate NaN."""
    return torch.where(mask, values, values.new_zeros(())).sum()


def masked_mean(values: Tensor, mask: Tensor, num_tokens: float | Tensor | None = None) -> Tensor:
    """The one masked mean every loss uses.

    Args:
        values: [b, n] per-token values (any float dtype; summed in fp32 or wider).
        mask: [b, n] bool, True where a value counts.
        num_tokens: global denominator set by the engine (a number, or a 0-dim tensor when
            it was reduced across processes); None means the local count.

    Returns:
        Scalar: sum of valid values / max(denominator, 1). All-masked gives exactly 0.
    """
    if values.shape != mask.shape:
        raise LossInputError(
            f"masked_mean: values {tuple(values.shape)} != mask {tuple(mask.shape)}"
        )
    return masked_sum(upcast(values), mask) / denominator(mask, num_tokens)


def check_finite(name: str, x: Tensor | None) -> None:
    """Raise `NonFiniteError` naming `name` if `x` holds NaN or +inf (-inf is a legal mask).

    One reduction pass (amax propagates NaN), no [b, n, v] temporary. Skipped inside
    `debug_checks(False)`.
    """
    if not checks_enabled() or x is None or x.numel() == 0 or not x.is_floating_point():
        return
    top = float(x.detach().amax())
    if not top < math.inf:
        what = "NaN" if math.isnan(top) else "+inf"
        raise NonFiniteError(f"{name} contains {what}; refusing to compute a loss from it")


def check_result(name: str, loss: Tensor, **inputs: Tensor | None) -> None:
    """Raise if `loss` is not finite, naming the first non-finite input or else the loss.

    Skipped inside `debug_checks(False)`.
    """
    if not checks_enabled() or bool(torch.isfinite(loss.detach()).all()):
        return
    for input_name, x in inputs.items():
        check_finite(input_name, x)
        if x is not None and x.is_floating_point() and bool((x.detach() == -math.inf).any()):
            if bool((x.detach() == -math.inf).all(dim=-1).any()):
                raise NonFiniteError(f"{input_name} has a row that is -inf everywhere")
    raise NonFiniteError(f"{name} is not finite ({float(loss.detach())}) although its inputs are")


def finish_with_ce(
    owner: str,
    loss: Tensor,
    metrics: dict,
    per_token_ce: Tensor | None,
    ce_weight: float,
    student: ModelOutputs,
) -> LossOutput:
    """Add `ce_weight` x the student's masked-mean CE (when given), check, and package."""
    if per_token_ce is not None:
        ce = masked_mean(per_token_ce, student.mask, student.num_tokens)
        loss = loss + ce_weight * ce
        metrics["ce"] = ce.detach()
    check_result(f"{owner} loss", loss)
    metrics["loss"] = loss.detach()
    return LossOutput(loss=loss, metrics=metrics)


def check_pair(student: ModelOutputs, teacher: TeacherSignals, owner: str) -> None:
    """Batch sizes (and ids, when both carry them) must match."""
    if student.batch_size != teacher.batch_size:
        raise LossInputError(
            f"{owner}: student batch {student.batch_size} != teacher batch {teacher.batch_size}; "
            "teacher and student must see the same batch"
        )
    if (
        student.ids is not None
        and teacher.ids is not None
        and list(student.ids) != list(teacher.ids)
    ):
        raise LossInputError(f"{owner}: student ids {student.ids} != teacher ids {teacher.ids}")


def require_tokens(mask: Tensor, owner: str, what: str = "answer tokens") -> None:
    """A loss that needs answer tokens raises when the batch has none (unless checks are off)."""
    if checks_enabled() and not bool(mask.any()):
        raise LossInputError(f"{owner}: the batch has no {what} (mask is all False)")


def xlogy_diff(p: Tensor, log_p: Tensor, log_q: Tensor) -> Tensor:
    """p * (log p - log q) with 0 where p == 0, so -inf logits never produce NaN.

    The difference is masked too: where p == 0 both logs may be -inf, and their NaN
    difference would reach the gradient through the product's backward (0 * NaN)."""
    pos = p > 0
    zero = p.new_zeros(())
    return torch.where(pos, p * torch.where(pos, log_p - log_q, zero), zero)


def chunk_slices(n: int, chunk_size: int | None):
    """The sequence slices every chunked loop in `losses` walks (None: one slice).

    `chunked` below is the one generic wrapper; the two closed-form kernels
    (`losses._fused_kl`, `losses._fused_ot`) walk the same slices with hand-written backwards.
    """
    step = n if not chunk_size else chunk_size
    return [slice(a, a + step) for a in range(0, max(n, 1), step)]


def chunked(
    fn: Callable[..., Tensor | tuple[Tensor, ...]],
    sliced: Sequence[Tensor | None],
    *,
    chunk_size: int | None,
    fixed: Sequence[object] = (),
    reduce: str = "cat",
) -> Tensor | tuple[Tensor, ...]:
    """Run a per-position function over sequence chunks with bounded forward AND backward memory.

    `fn(*sliced_chunks, *fixed)` maps tensors sliced to [b, c, ...] along dim 1 to one or
    more per-position tensors [b, c] (or [b, c, ...]); the outputs are concatenated on dim 1.
    With gradients enabled this is a custom autograd function (`_Chunked`): the forward
    runs the chunks under `no_grad` and keeps only the inputs (no copy); the backward
    allocates one gradient buffer per differentiable input and recomputes one chunk at a
    time, writing each chunk's gradient into its slice. So no [b, n, v] fp32 softmax is
    alive at once, in either direction. (Plain `torch.utils.checkpoint` per chunk was
    measured first: each chunk's slice-backward materialises a full [b, n, v] zero
    gradient, which made it slower and larger than no chunking at all.)
    This is the only chunking code in `losses`; every family calls it.

    Args:
        fn: per-position function; must be pure (it runs again in the backward).
        sliced: tensors with the sequence on dim 1 (None passes through as None).
        chunk_size: positions per chunk; None or >= n runs `fn` once, unchunked.
        fixed: extra arguments passed unchanged to every call; `nn.Module`s among them
            get gradients for their parameters.
        reduce: "cat" concatenates chunk outputs on dim 1; "sum" adds them (no gradient;
            for statistics summed over positions, e.g. per-sequence column sums).
    """
    n = next(x.shape[1] for x in sliced if x is not None)
    if chunk_size is None or chunk_size >= n:
        return fn(*sliced, *fixed)
    params = [p for f in fixed if isinstance(f, torch.nn.Module) for p in f.parameters()]
    needs_grad = torch.is_grad_enabled() and any(
        isinstance(x, Tensor) and x.requires_grad for x in (*sliced, *fixed, *params)
    )
    if needs_grad and reduce == "cat":
        spec = (fn, chunk_size, len(sliced), tuple(fixed))
        out = _Chunked.apply(spec, *sliced, *params)
        return out if len(out) > 1 else out[0]
    pieces = []
    with torch.no_grad() if reduce == "sum" else contextlib.nullcontext():
        for start in range(0, n, chunk_size):
            pieces.append(
                fn(
                    *[None if x is None else x[:, start : start + chunk_size] for x in sliced],
                    *fixed,
                )
            )
    if reduce == "sum":
        if isinstance(pieces[0], tuple):
            return tuple(sum(p[i] for p in pieces) for i in range(len(pieces[0])))
        return sum(pieces)
    if isinstance(pieces[0], tuple):
        return tuple(torch.cat([p[i] for p in pieces], dim=1) for i in range(len(pieces[0])))
    return torch.cat(pieces, dim=1)


class _Chunked(torch.autograd.Function):
    """Forward chunk by chunk without a graph; backward recomputes one chunk at a time."""

    @staticmethod
    def forward(ctx, spec, *inputs):
        fn, chunk_size, n_sliced, fixed = spec
        sliced = inputs[:n_sliced]
        n = next(x.shape[1] for x in sliced if x is not None)
        pieces = []
        with torch.no_grad():
            for start in range(0, n, chunk_size):
                out = fn(
                    *[None if x is None else x[:, start : start + chunk_size] for x in sliced],
                    *fixed,
                )
                pieces.append(out if isinstance(out, tuple) else (out,))
        ctx.spec, ctx.inputs, ctx.n = spec, inputs, n
        return tuple(torch.cat([p[i] for p in pieces], dim=1) for i in range(len(pieces[0])))

    @staticmethod
    def backward(ctx, *grad_outputs):
        fn, chunk_size, n_sliced, fixed = ctx.spec
        sliced, params = ctx.inputs[:n_sliced], ctx.inputs[n_sliced:]
        wanted = [i for i, x in enumerate(sliced) if x is not None and x.requires_grad]
        grads = {i: torch.zeros_like(sliced[i]) for i in wanted}
        param_grads = [torch.zeros_like(p) if p.requires_grad else None for p in params]
        live_params = [p for p in params if p.requires_grad]
        for start in range(0, ctx.n, chunk_size):
            stop = start + chunk_size
            parts = [None if x is None else x[:, start:stop].detach() for x in sliced]
            for i in wanted:
                parts[i].requires_grad_(True)
            with torch.enable_grad():
                out = fn(*parts, *fixed)
            out = out if isinstance(out, tuple) else (out,)
            pairs = [
                (o, g[:, start:stop])
                for o, g in zip(out, grad_outputs)
                if g is not None and o.requires_grad
            ]
            if not pairs:
                continue
            got = torch.autograd.grad(
                [o for o, _ in pairs],
                [parts[i] for i in wanted] + live_params,
                [g for _, g in pairs],
                allow_unused=True,
            )
            for i, g in zip(wanted, got[: len(wanted)]):
                if g is not None:
                    grads[i][:, start:stop] = g
            it = iter(got[len(wanted) :])
            for j, p in enumerate(params):
                if p.requires_grad:
                    g = next(it)
                    if g is not None:
                        param_grads[j] += g
        return (None, *[grads.get(i) for i in range(n_sliced)], *param_grads)


def token_cross_entropy(
    logits: Tensor, targets: Tensor, mask: Tensor, chunk_size: int | None
) -> Tensor:
    """Per-token CE [b, n] of `logits` [b, n, v] against `targets` [b, n], 0 where masked."""

    return chunked(_ce_values, (logits, targets, mask), chunk_size=chunk_size)


def _ce_values(x: Tensor, y: Tensor, m: Tensor) -> Tensor:
    lp = torch.log_softmax(upcast(x), dim=-1)
    picked = lp.gather(-1, y.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return torch.where(m, -picked, picked.new_zeros(()))


def ce_chunk(x: Tensor, y: Tensor, m: Tensor) -> tuple[Tensor]:
    """Per-token CE [b, c] of one chunk of logits, as a 1-tuple (`linear_terms`' form)."""
    return (_ce_values(x, y, m),)


def denominator(mask: Tensor, num_tokens: float | Tensor | None) -> Tensor | float:
    """What `masked_mean` divides by: max(num_tokens, 1), or the mask's count (no sync)."""
    if num_tokens is None:
        return mask.sum().clamp_min(1)
    if isinstance(num_tokens, Tensor):
        return num_tokens.clamp_min(1.0)
    return max(float(num_tokens), 1.0)
