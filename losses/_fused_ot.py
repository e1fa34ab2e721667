"""Fused, chunked "std-scaled softmax, per-sequence top-k" for MultiLevelOT, closed-form backward.

Glossary: b batch, n answer tokens, v vocab, k kept ids, c chunk length.

Per row x [v]: mu = mean(x), sigma = std(x) (unbiased), s = sigma + 1e-4,
z = x / (s T), p = softmax(z). Per sequence, ids [k] = the k largest sum_i p_i over its
valid rows. Outputs q = p[ids] [b, n, k] and the CE at T = 1, ce = lse(x) - x_y [b, n].

One forward pass per chunk computes every row statistic (mu, sigma, lse(z), E_p[x],
lse(x)) and the column sums; q is then a gather. The backward is one pass per chunk:
with G = sum_j gq_j q_j and A = sum_j gq_j q_j x_ids_j,
    dL/dz = scatter_ids(gq * q) - G p
    dL/dx = dL/dz / (s T) - (A - G E_p[x]) / (s^2 T (v - 1) sigma) * (x - mu)
            + gce * (softmax(x) - onehot(y))
(z depends on x directly and through sigma, d sigma / d x = (x - mu) / ((v - 1) sigma)).
"""

from __future__ import annotations

import torch
from torch import Tensor

from losses._reduce import chunk_slices, upcast


def _row_stats(x: Tensor, temperature: float):
    # two vectorised reductions instead of torch.std_mean (Welford, measured 3x slower on CPU);
    # the cancellation is harmless for logits, whose spread is not tiny next to their mean
    v = x.shape[-1]
    mu = x.sum(-1) / v
    sq = torch.linalg.vector_norm(x, dim=-1).square()
    sigma = ((sq - v * mu * mu) / (v - 1)).clamp_min(0).sqrt()
    scale = 1.0 / ((sigma + 1e-4) * temperature)
    z = x * scale.unsqueeze(-1)
    lse = torch.logsumexp(z, -1)
    p = torch.exp(z.sub_(lse.unsqueeze(-1)))
    return sigma, mu, scale, lse, p


def std_topk_forward(
    logits: Tensor, mask: Tensor, targets: Tensor | None, k: int, temperature: float, chunk
):
    """The forward above without autograd; returns (q, ce, ids, stats)."""
    b, n, v = logits.shape
    dtype = upcast(logits[:, :0]).dtype
    stats = {
        name: logits.new_zeros(b, n, dtype=dtype)
        for name in ("sigma", "mu", "scale", "lse", "ep", "lse1")
    }
    colsum = logits.new_zeros(b, v, dtype=dtype)
    for sl in chunk_slices(n, chunk):
        x = upcast(logits[:, sl])
        sigma, mu, scale, lse, p = _row_stats(x, temperature)
        m = mask[:, sl].to(dtype).unsqueeze(-1)
        colsum += torch.einsum("bcv,bcx->bv", p, m)
        stats["ep"][:, sl] = (p * x).sum(-1)
        stats["sigma"][:, sl], stats["mu"][:, sl], stats["scale"][:, sl], stats["lse"][:, sl] = (
            sigma,
            mu,
            scale,
            lse,
        )
        if targets is not None:
            stats["lse1"][:, sl] = torch.logsumexp(x, -1)
    ids = colsum.topk(min(k, v), dim=-1).indices  # [b, k], sorted by column mass
    x_ids = upcast(logits.gather(-1, ids.unsqueeze(1).expand(-1, n, -1))).to(dtype)
    q = torch.exp(x_ids * stats["scale"].unsqueeze(-1) - stats["lse"].unsqueeze(-1))
    ce = torch.zeros_like(stats["lse"])
    if targets is not None:
        ce = stats["lse1"] - upcast(logits.gather(-1, targets.clamp_min(0).unsqueeze(-1))).squeeze(
            -1
        ).to(dtype)
    return q, ce, ids, x_ids, stats


class StdTopkProbs(torch.autograd.Function):
    """(q [b, n, k], ce [b, n]) for the student, with the closed-form backward above."""

    @staticmethod
    def forward(ctx, logits, mask, targets, k, temperature, chunk):
        q, ce, ids, x_ids, stats = std_topk_forward(logits, mask, targets, k, temperature, chunk)
        ctx.save_for_backward(logits, targets, ids, x_ids, q, *stats.values())
        ctx.temperature, ctx.chunk = temperature, chunk
        return q, ce

    @staticmethod
    def backward(ctx, g_q: Tensor, g_ce: Tensor):
        logits, targets, ids, x_ids, q, sigma, mu, scale, lse, ep, lse1 = ctx.saved_tensors
        n, v = logits.shape[1], logits.shape[2]
        gq = g_q * q  # [b, n, k]
        G = gq.sum(-1)
        A = (gq * x_ids).sum(-1)
        coef = (A - G * ep) * scale / ((sigma + 1e-4) * (v - 1) * sigma.clamp_min(1e-12))
        y = targets.clamp_min(0).unsqueeze(-1)
        grad = torch.empty_like(logits)
        for sl in chunk_slices(n, ctx.chunk):
            x = upcast(logits[:, sl])
            sc = scale[:, sl].unsqueeze(-1)
            p = torch.exp(x * sc - lse[:, sl].unsqueeze(-1))
            g = p.mul_(-(G[:, sl].unsqueeze(-1) * sc))
            g.scatter_add_(-1, ids.unsqueeze(1).expand(-1, x.shape[1], -1), gq[:, sl] * sc)
            g.sub_((x - mu[:, sl].unsqueeze(-1)).mul_(coef[:, sl].unsqueeze(-1)))
            gc = g_ce[:, sl].unsqueeze(-1)
            g.add_(torch.exp(x - lse1[:, sl].unsqueeze(-1)).mul_(gc))
            g.scatter_add_(-1, y[:, sl], -gc)
            grad[:, sl] = g
        return grad, None, None, None, None, None
