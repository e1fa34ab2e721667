"""Fused, chunked forward KL + CE with a hand-written backward: TokenKL's hot path.

Glossary: b batch, n answer tokens, v vocab, c chunk length.

Used by `TokenKL` when the divergence is the forward KL, the teacher is dense with the
student's vocabulary and tokenizer, and chunking is on (the common case, and the one the
benchmark measures). The generic `losses._reduce.chunked` wrapper recomputes every chunk's
forward in the backward; here the gradient is known in closed form, so the forward keeps
only per-row log-sum-exps [b, n] and the backward is a single pass per chunk:

    z_s = x / T, z_t = t / T, p = softmax
    kd_i = sum_v p_t (z_t - z_s) - lse(z_t) + lse(z_s)            = KL(p_t^T || p_s^T)
    ce_i = lse(x) - x_y
    d kd_i / d x = (p_s^T - p_t^T) / T,    d ce_i / d x = softmax(x) - onehot(y)

Peak memory is the [b, n, v] gradient plus a few [b, c, v] chunk temporaries.
"""

from __future__ import annotations

import torch
from torch import Tensor

from losses._reduce import chunk_slices, upcast

_LOW = -1.0e30  # stands in for -inf teacher logits, so 0 * (-inf) never makes NaN


class FusedForwardKL(torch.autograd.Function):
    """(kd [b, n], ce [b, n]) = per-position forward KL at T and CE at T = 1."""

    @staticmethod
    def forward(
        ctx, student: Tensor, teacher: Tensor, targets: Tensor, temperature: float, chunk: int
    ):
        b, n, _ = student.shape
        dtype = upcast(student[:, :0]).dtype
        kd = student.new_empty(b, n, dtype=dtype)
        ce = torch.empty_like(kd)
        lse_s, lse_t, lse_1 = torch.empty_like(kd), torch.empty_like(kd), torch.empty_like(kd)
        T = temperature
        y = targets.clamp_min(0).unsqueeze(-1)
        for sl in chunk_slices(n, chunk):
            x = upcast(student[:, sl])
            z_s, z_t = x / T, upcast(teacher[:, sl]).to(dtype) / T
            ls, lt = torch.logsumexp(z_s, -1), torch.logsumexp(z_t, -1)
            p_t = torch.exp(z_t - lt.unsqueeze(-1))
            kd[:, sl] = (p_t * (z_t.clamp_min(_LOW) - z_s)).sum(-1) - lt + ls
            l1 = ls if T == 1.0 else torch.logsumexp(x, -1)
            ce[:, sl] = l1 - x.gather(-1, y[:, sl]).squeeze(-1)
            lse_s[:, sl], lse_t[:, sl], lse_1[:, sl] = ls, lt, l1
        ctx.save_for_backward(student, teacher, y, lse_s, lse_t, lse_1)
        ctx.temperature, ctx.chunk = T, chunk
        return kd, ce

    @staticmethod
    def backward(ctx, g_kd: Tensor, g_ce: Tensor):
        student, teacher, y, lse_s, lse_t, lse_1 = ctx.saved_tensors
        T, chunk = ctx.temperature, ctx.chunk
        grad = torch.empty_like(student)
        g_kd = (g_kd / T).unsqueeze(-1)
        g_ce = g_ce.unsqueeze(-1)
        for sl in chunk_slices(student.shape[1], chunk):
            x = upcast(student[:, sl])
            p_s = torch.exp(x / T - lse_s[:, sl].unsqueeze(-1))
            p_t = torch.exp(upcast(teacher[:, sl]).to(x.dtype) / T - lse_t[:, sl].unsqueeze(-1))
            g = (p_s - p_t).mul_(g_kd[:, sl])
            p_1 = p_s if T == 1.0 else torch.exp(x - lse_1[:, sl].unsqueeze(-1))
            g.add_(p_1 * g_ce[:, sl])
            g.scatter_add_(-1, y[:, sl], -g_ce[:, sl])
            # rows without gradient (padding) stay 0 even where the teacher row is all -inf
            g.masked_fill_((g_kd[:, sl] == 0) & (g_ce[:, sl] == 0), 0.0)
            grad[:, sl] = g
        return grad, None, None, None, None


def forward_kl_ce_grad(
    logits: Tensor,
    weights: list,
    targets: Tensor,
    teacher: Tensor,
    temperature: float,
    out: Tensor | None = None,
) -> tuple[tuple[Tensor, Tensor], Tensor]:
    """One chunk of the fused-head path in closed form: (kd [b, c], ce [b, c]) and
    d(sum w_kd kd + w_ce ce) / d logits [b, c, v], the formulas of the module doc.

    Consumes `logits` (fp32/fp64 logits are overwritten in place: the caller made them for
    this call) and holds three [b, c, v] buffers, the log-sum-exps included (they run in
    the third buffer); autograd through the same maths keeps about ten. The gradient is
    written into `out` when given (a [b, c, v] buffer of the logits' upcast dtype, e.g. a
    slice of the caller's staging buffer), else into a new one. `weights` = [w_kd, w_ce]
    (each [b, c], a number or None), as `linear_terms` slices them.
    """
    T = temperature
    w_kd, w_ce = (0.0 if w is None else w for w in weights[:2])
    x = upcast(logits)  # buffer 1
    scratch = torch.empty_like(x)  # buffer 3: the log-sum-exps, then p_t, then softmax(x)
    y = targets.clamp_min(0).unsqueeze(-1)
    x_y = x.gather(-1, y).squeeze(-1)
    l1 = None if T == 1.0 else _logsumexp(x, scratch)
    z_s = x if T == 1.0 else x.div_(T)
    ls = _logsumexp(z_s, scratch)
    l1 = ls if l1 is None else l1
    # buffer 2 (never the teacher's own storage): z_t, then the gradient
    z_t = torch.empty_like(x) if out is None else out
    z_t.copy_(teacher).div_(T)
    lt = _logsumexp(z_t, scratch)
    p_t = torch.sub(z_t, lt, out=scratch).exp_()
    kd = z_t.clamp_min_(_LOW).sub_(z_s).mul_(p_t).sum(-1) - lt.squeeze(-1) + ls.squeeze(-1)
    ce = l1.squeeze(-1) - x_y
    a = _col(w_kd, z_s) / T
    c = _col(w_ce, z_s)
    g = torch.sub(z_s, ls, out=z_t).exp_().sub_(p_t).mul_(a)  # (p_s - p_t) w_kd / T
    if T == 1.0:  # softmax(x) = p_s, in buffer 3
        p_1 = torch.sub(z_s, ls, out=p_t).exp_()
    else:
        p_1 = torch.mul(z_s, T, out=p_t).sub_(l1).exp_()
    g.add_(p_1.mul_(c))
    g.scatter_add_(-1, y, -c.expand_as(y).to(g.dtype) if isinstance(c, Tensor) else
                   torch.full_like(y, -c, dtype=g.dtype))  # fmt: skip
    if isinstance(a, Tensor) and isinstance(c, Tensor):  # weightless rows (padding) give 0,
        g.masked_fill_((a == 0) & (c == 0), 0.0)  # even where their logits are not finite
    return (kd, ce), g


def _logsumexp(z: Tensor, scratch: Tensor) -> Tensor:
    """logsumexp over the last dim [..., 1], with `scratch` (z's shape) as its only buffer.

    Rows that are all -inf (padding of a sparse teacher) give -inf, as torch.logsumexp.
    """
    m = z.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    total = torch.sub(z, m, out=scratch).exp_().sum(-1, keepdim=True)
    return total.log_().add_(m)


def _col(w, like: Tensor):
    """A weight as [b, c, 1] (tensor) or a number, in the logits' dtype."""
    if isinstance(w, Tensor):
        return w.to(like.dtype).reshape(*w.shape, *([1] * (like.dim() - w.dim())))
    return float(w)
