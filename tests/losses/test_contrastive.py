"""QFormerContrastive: closed form, naive parity, invariants, projections and gradients."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch.testing import assert_close

from distill.contracts import ModelOutputs, TeacherSignals
from losses import QFormerContrastive


def pair(b=2, w=3, ds=4, dt=4, seed=0, valid=None):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, 1, dtype=torch.bool)
    ids = torch.zeros(b, 1, dtype=torch.long)
    q_mask = (
        torch.ones(b, w, dtype=torch.bool)
        if valid is None
        else torch.arange(w) < torch.tensor(valid)[:, None]
    )
    qs = torch.randn(b, w, ds, generator=g, dtype=torch.float64).requires_grad_(True)
    qt = torch.randn(b, w, dt, generator=g, dtype=torch.float64)
    logits = torch.zeros(b, 1, 3, dtype=torch.float64)
    s = ModelOutputs(mask=mask, token_ids=ids, logits=logits, qformer=qs, qformer_mask=q_mask)
    t = TeacherSignals(mask=mask, token_ids=ids, logits=logits, qformer=qt, qformer_mask=q_mask)
    return s, t


def naive(s, t, tau):
    zs = [
        s.qformer[b, i].detach()
        for b in range(s.qformer.shape[0])
        for i in range(s.qformer.shape[1])
        if s.qformer_mask[b, i]
    ]
    zt = [
        t.qformer[b, i]
        for b in range(t.qformer.shape[0])
        for i in range(t.qformer.shape[1])
        if t.qformer_mask[b, i]
    ]
    zs = [z / z.norm() for z in zs]
    zt = [z / z.norm() for z in zt]
    n = len(zs)
    S = [[float(zs[i] @ zt[j]) / tau for j in range(n)] for i in range(n)]
    row = sum(-S[i][i] + math.log(sum(math.exp(x) for x in S[i])) for i in range(n)) / n
    col = sum(-S[j][j] + math.log(sum(math.exp(S[i][j]) for i in range(n))) for j in range(n)) / n
    return 0.5 * (row + col)


def test_hand_value_orthogonal_windows():
    """Two windows, student = teacher = orthonormal e1, e2: S = I / tau, so each CE is
    log(1 + exp(-1 / tau)); with tau = 0.5 that is log(1 + e^-2)."""
    s, t = pair(b=1, w=2, ds=2, dt=2)
    s.qformer.data = torch.eye(2, dtype=torch.float64)[None]
    t.qformer.data = torch.eye(2, dtype=torch.float64)[None]
    out = QFormerContrastive(temperature=0.5)(s, t)
    assert out.metrics["loss"] == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-12)
    assert out.metrics["accuracy"] == 1.0


def test_matches_naive_reference_with_masks():
    s, t = pair(b=3, w=4, seed=1, valid=[4, 2, 3])
    out = QFormerContrastive(temperature=0.1)(s, t)
    assert out.metrics["loss"] == pytest.approx(naive(s, t, 0.1), abs=1e-10)
    assert out.metrics["windows"] == 9


def test_padding_all_masked_and_item_zero_counts():
    s, t = pair(b=2, w=3, seed=2, valid=[3, 2])
    loss = QFormerContrastive(temperature=0.2)
    base = loss(s, t).loss
    s.qformer.data[1, 2] = 100.0  # a padded window: no effect
    assert_close(loss(s, t).loss, base, atol=1e-12, rtol=0)
    t.qformer[0, 0] += 1.0
    assert loss(s, t).metrics["loss"] == pytest.approx(naive(s, t, 0.2), abs=1e-10)
    s.qformer_mask[:] = False
    assert loss(s, t).loss.item() == 0.0
    # nothing to score still touches the projections and the temperature (DDP: every
    # process must use every parameter)
    learned = QFormerContrastive(student_dim=3, teacher_dim=5, proj_dim=4,
                                 learn_temperature=True).double()  # fmt: skip
    s2, t2 = pair(b=2, w=3, seed=3, valid=[0, 0], ds=3, dt=5)
    learned(s2, t2).loss.backward()
    for name, p in learned.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() == 0, name


def test_projection_and_temperature_are_trained():
    s, t = pair(ds=4, dt=6, seed=3)
    loss = QFormerContrastive(student_dim=4, teacher_dim=6, learn_temperature=True).double()
    names = {n for n, _ in loss.named_parameters()}
    assert {"student_proj.weight", "log_scale"} <= names
    loss(s, t).loss.backward()
    assert loss.student_proj.weight.grad.abs().sum() > 0 and loss.log_scale.grad is not None
    assert "student_proj.weight" in loss.state_dict()


def test_gradcheck_and_zero_grad_on_padding():
    s, t = pair(b=2, w=3, seed=4, valid=[3, 1])
    loss = QFormerContrastive(temperature=0.3)

    def f(x):
        return loss(dataclasses.replace(s, qformer=x), t).loss

    assert torch.autograd.gradcheck(f, (s.qformer,))
    (g,) = torch.autograd.grad(f(s.qformer), s.qformer)
    assert g[1, 1:].abs().max().item() == 0.0


def test_window_count_mismatch_is_an_error():
    s, _ = pair(w=3)
    _, t = pair(w=4)
    with pytest.raises(ValueError, match="windows"):
        QFormerContrastive()(s, t)
