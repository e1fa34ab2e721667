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
            grad[:, sl] = g
        return grad, None, None, None, None
