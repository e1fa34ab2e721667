"""Batched, masked, log-domain Sinkhorn (Cuturi 2013), equal to POT's `ot.sinkhorn2(method="sinkhorn_log")`.

Glossary: b batch, n student tokens (rows), m teacher tokens (columns), k features.

For each batch item the marginals are uniform over its valid rows / columns
(a_i = 1 / n_valid, b_j = 1 / m_valid), the kernel is exp(-M / eps), and `iters` rounds of
    g = log b - logsumexp_i(-M_ij / eps + f_i)
    f = log a - logsumexp_j(-M_ij / eps + g_j)
(the same update order as POT's `sinkhorn_log`) give the plan P_ij = exp(-M_ij / eps + f_i + g_j).
The returned cost is <P, M>, which is what `ot.sinkhorn2` returns. Padded rows and
columns get log-marginal -1e4 (not -inf) so every exp underflows to exactly 0 in
float32/float64 while every gradient stays finite.

When exp(-M / eps) cannot underflow (min(-M / eps) > log(tiny) / 2, always true for the
L1 cost between probability vectors, M <= 2, at eps 0.1) each logsumexp is computed as
max + log(exp(potential - max) @ exp(-M / eps)), a batched mat-vec; otherwise the plain
logsumexp form runs. Both are the same updates; the tests check both against POT.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_MASKED_LOG = -1.0e4


def l1_cost(x: Tensor, y: Tensor) -> Tensor:
    """Pairwise L1 distances [b, n, m] between rows of x [b, n, k] and y [b, m, k]."""
    return (x.unsqueeze(2) - y.unsqueeze(1)).abs().sum(-1)


def sinkhorn(
    cost: Tensor,
    row_mask: Tensor | None = None,
    col_mask: Tensor | None = None,
    eps: float = 0.1,
    iters: int = 10,
    return_plan: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Entropic OT between uniform distributions on the valid rows and columns.

    Args:
        cost: [b, n, m] cost matrices.
        row_mask: [b, n] bool, True on valid rows (None: all valid).
        col_mask: [b, m] bool.
        eps: entropic regularisation (POT's `reg`).
        iters: number of Sinkhorn rounds (POT's `numItermax`; no early stop).
        return_plan: also build the [b, n, m] plan (skipped by losses that need only the cost).

    Returns:
        cost: [b] transport cost <P, M> per item (0 for an item with no valid row or column).
        plan: [b, n, m] transport plan (zero on padding), or None.
    """
    b, n, m = cost.shape
    if row_mask is None:
        row_mask = torch.ones(b, n, dtype=torch.bool, device=cost.device)
    if col_mask is None:
        col_mask = torch.ones(b, m, dtype=torch.bool, device=cost.device)
    valid = row_mask.any(-1) & col_mask.any(-1)
    log_a = _log_uniform(row_mask, cost.dtype)
    log_b = _log_uniform(col_mask, cost.dtype)
    # padded entries get a finite cost so 0 * cost never makes NaN
    cost = torch.where(row_mask.unsqueeze(2) & col_mask.unsqueeze(1), cost, cost.new_zeros(()))
    kernel = cost * (-1.0 / eps)
    # POT starts from f = 0 on the (valid) rows; padded rows must start switched off too
    f = torch.where(row_mask, torch.zeros_like(log_a), log_a)
    g = torch.zeros_like(log_b)
    plan = None
    if bool(kernel.min() > 0.5 * math.log(torch.finfo(kernel.dtype).tiny)):
        # exp(-M / eps) has no underflow: the same log-domain updates, each logsumexp shifted
        # by the potentials' max and done as a batched mat-vec on the kernel
        k_exp = torch.exp(kernel)
        for _ in range(iters):
            f_max = f.amax(-1, keepdim=True)
            row = torch.bmm((f - f_max).exp().unsqueeze(1), k_exp).squeeze(1)
            g = log_b - f_max - torch.log(row)
            g_max = g.amax(-1, keepdim=True)
            col = torch.bmm(k_exp, (g - g_max).exp().unsqueeze(2)).squeeze(2)
            f = log_a - g_max - torch.log(col)
        # P = diag(e^(f - f_max)) K diag(e^(g + f_max)); P_ij <= 1 keeps both factors finite
        f_max = f.amax(-1, keepdim=True)
        left, right = (f - f_max).exp(), (g + f_max).exp()
        weighted = torch.bmm(k_exp * cost, right.unsqueeze(2)).squeeze(2)
        total = (left * weighted).sum(-1)
        if return_plan:
            plan = k_exp * (left.unsqueeze(2) * right.unsqueeze(1))
    else:
        for _ in range(iters):
            g = log_b - torch.logsumexp(kernel + f.unsqueeze(2), dim=1)
            f = log_a - torch.logsumexp(kernel + g.unsqueeze(1), dim=2)
        full = torch.exp(kernel + f.unsqueeze(2) + g.unsqueeze(1))
        total = (full * cost).sum(dim=(1, 2))
        plan = full if return_plan else None
    return torch.where(valid, total, total.new_zeros(())), plan


def _log_uniform(mask: Tensor, dtype: torch.dtype) -> Tensor:
    count = mask.sum(-1, keepdim=True).clamp_min(1).to(dtype)
    return torch.where(mask, -torch.log(count), torch.full_like(count, _MASKED_LOG))
