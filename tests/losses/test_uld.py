"""ULD (Boizard et al. 2024): closed form, naive parity, invariants, gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from distill.contracts import ModelOutputs, TeacherSignals
from losses import ULD

from .conftest import make_pair, pad_batch


def naive_uld(s, t, weight=1.5):
    l1, count, ce = 0.0, 0, 0.0
    for b in range(s.mask.shape[0]):
        for i in range(s.mask.shape[1]):
            if s.mask[b, i]:
                ps = sorted(s.logits[b, i].detach().softmax(-1).tolist(), reverse=True)
                pt = sorted(t.logits[b, i].softmax(-1).tolist(), reverse=True)
                width = max(len(ps), len(pt))
                ps, pt = ps + [0.0] * (width - len(ps)), pt + [0.0] * (width - len(pt))
                l1 += sum(abs(a - c) for a, c in zip(ps, pt))
                ce -= float(s.logits[b, i].detach().log_softmax(-1)[s.token_ids[b, i]])
                count += 1
    return (ce + weight * l1) / max(count, 1)


def test_equal_distributions_up_to_permutation_give_zero():
    s, t = make_pair(b=2, n=3, v=5)
    perm = torch.tensor([4, 2, 0, 1, 3])
    t = TeacherSignals(
        mask=t.mask, token_ids=t.token_ids, logits=s.logits.detach()[..., perm].clone()
    )
    assert ULD(ce_weight=0.0)(s, t).metrics["loss"] == pytest.approx(0.0, abs=1e-12)


def test_hand_value():
    """v = 2: p_s = (1/2, 1/2), p_t sorted = (3/4, 1/4): L1 = 1/4 + 1/4 = 1/2, times 1.5."""
    mask, ids = torch.ones(1, 1, dtype=torch.bool), torch.zeros(1, 1, dtype=torch.long)
    s = ModelOutputs(mask=mask, token_ids=ids, logits=torch.zeros(1, 1, 2, dtype=torch.float64))
    t = TeacherSignals(
        mask=mask, token_ids=ids, logits=torch.tensor([[[0.0, math.log(3)]]], dtype=torch.float64)
    )
    assert ULD(ce_weight=0.0)(s, t).metrics["loss"] == pytest.approx(0.75, abs=1e-12)


def test_matches_naive_reference_with_different_vocab_sizes():
    s, t = make_pair(b=2, n=4, v=6, seed=1)
    big = torch.randn(2, 4, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    t = TeacherSignals(mask=t.mask, token_ids=t.token_ids, logits=big)
    assert ULD(chunk_size=3)(s, t).metrics["loss"] == pytest.approx(naive_uld(s, t), abs=1e-10)


def test_padding_all_masked_and_items():
    s, t = make_pair(b=2, n=4, v=5, seed=2)
    s2, t2 = pad_batch(s, t)
    assert_close(ULD()(s2, t2).loss, ULD()(s, t).loss, atol=1e-12, rtol=0)
    t.logits[0, 0] += torch.linspace(0, 3, 5, dtype=torch.float64)
    assert ULD()(s, t).metrics["loss"] == pytest.approx(naive_uld(s, t), abs=1e-10)
    s.mask[:] = False
    t.mask[:] = False
    assert ULD()(s, t).loss.item() == 0.0


def test_gradcheck_and_zero_grad_on_padding():
    s, t = make_pair(b=2, n=3, v=4, seed=4, lengths=[3, 1])

    def f(x):
        return ULD(chunk_size=2)(ModelOutputs(mask=s.mask, token_ids=s.token_ids, logits=x), t).loss

    assert torch.autograd.gradcheck(f, (s.logits,))
    (g,) = torch.autograd.grad(f(s.logits), s.logits)
    assert g[1, 1:].abs().max().item() == 0.0
