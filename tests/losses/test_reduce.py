"""The shared numerics: masked mean, finiteness checks, the chunking wrapper."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from losses._reduce import NonFiniteError, check_finite, chunked, masked_mean


def test_masked_mean_all_masked_is_zero_and_num_tokens():
    values = torch.tensor([[1.0, float("nan")], [3.0, 4.0]])
    mask = torch.tensor([[True, False], [True, False]])
    assert masked_mean(values, mask).item() == 2.0
    assert masked_mean(values, mask, num_tokens=4).item() == 1.0
    assert masked_mean(values, torch.zeros_like(mask)).item() == 0.0


def test_check_finite_names_the_tensor_and_allows_minus_inf():
    check_finite("x", torch.tensor([0.0, -float("inf")]))
    with pytest.raises(NonFiniteError, match="teacher.logits contains \\+inf"):
        check_finite("teacher.logits", torch.tensor([float("inf")]))
    with pytest.raises(NonFiniteError, match="NaN"):
        check_finite("y", torch.tensor([float("nan")]))


def test_chunked_matches_direct_including_module_grads():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    lin = torch.nn.Linear(5, 5).double()

    def fn(x, module):
        y = module(x).log_softmax(-1)
        return y.exp().mul(y).sum(-1), y[..., 0]

    direct = fn(x, lin)
    loss_d = direct[0].sum() + 2 * direct[1].sum()
    grads_d = torch.autograd.grad(loss_d, [x, *lin.parameters()])
    out = chunked(fn, (x,), chunk_size=3, fixed=(lin,))
    loss_c = out[0].sum() + 2 * out[1].sum()
    grads_c = torch.autograd.grad(loss_c, [x, *lin.parameters()])
    assert_close(loss_c, loss_d)
    for a, b in zip(grads_c, grads_d):
        assert_close(a, b)
