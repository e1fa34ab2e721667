"""FeatureMSE: closed form, naive parity, resampling, invariants, projections, gradients."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.testing import assert_close

from distill.contracts import ModelOutputs, TeacherSignals
from losses import FeatureMSE


def pair(b=2, w=3, wt=None, ds=4, dt=4, seed=0, valid=None, field="qformer"):
    g = torch.Generator().manual_seed(seed)
    wt = wt or w
    mask, ids = torch.ones(b, 1, dtype=torch.bool), torch.zeros(b, 1, dtype=torch.long)
    logits = torch.zeros(b, 1, 3, dtype=torch.float64)
    xs = torch.randn(b, w, ds, generator=g, dtype=torch.float64).requires_grad_(True)
    xt = torch.randn(b, wt, dt, generator=g, dtype=torch.float64)
    s_kw, t_kw = {field: xs}, {field: xt}
    if field == "qformer" and valid is not None:
        s_kw["qformer_mask"] = torch.arange(w) < torch.tensor(valid)[:, None]
        t_kw["qformer_mask"] = torch.arange(wt) < torch.tensor(valid)[:, None]
    return ModelOutputs(mask=mask, token_ids=ids, logits=logits, **s_kw), TeacherSignals(
        mask=mask, token_ids=ids, logits=logits, **t_kw
    )


def test_equal_gives_zero_and_hand_value():
    """MSE of s = t + 1 everywhere is mean_d 1^2 = 1; cosine of s = -t is 1 - (-1) = 2."""
    s, t = pair()
    s.qformer.data = t.qformer + 1.0
    assert FeatureMSE()(s, t).metrics["loss"] == pytest.approx(1.0, abs=1e-12)
    s.qformer.data = -t.qformer
    assert FeatureMSE(metric="cosine")(s, t).metrics["loss"] == pytest.approx(2.0, abs=1e-12)
    s.qformer.data = t.qformer.clone()
    assert FeatureMSE()(s, t).metrics["loss"] == 0.0


def test_matches_naive_with_masks():
    s, t = pair(b=3, w=4, seed=1, valid=[4, 2, 3])
    got = FeatureMSE()(s, t).metrics["loss"]
    terms = [
        ((s.qformer[b, i].detach() - t.qformer[b, i]) ** 2).mean()
        for b in range(3)
        for i in range(4)
        if s.qformer_mask[b, i]
    ]
    assert got == pytest.approx(float(sum(terms) / len(terms)), abs=1e-12)


def test_resampling_linear_interpolation():
    """Student with 2 frames (0 and 2) resampled to 3 teacher frames gives (0, 1, 2)."""
    s, t = pair(b=1, w=2, wt=3, ds=1, dt=1, field="speech")
    s.speech.data = torch.tensor([[[0.0], [2.0]]], dtype=torch.float64)
    t.speech.data = torch.tensor([[[0.0], [1.0], [2.0]]], dtype=torch.float64)
    assert FeatureMSE(fields=["speech"])(s, t).metrics["loss"] == pytest.approx(0.0, abs=1e-12)


def test_padding_all_masked_and_item_counts():
    s, t = pair(b=2, w=3, seed=2, valid=[3, 2])
    loss = FeatureMSE()
    base = loss(s, t).loss
    s.qformer.data[1, 2] = 50.0
    assert_close(loss(s, t).loss, base, atol=1e-12, rtol=0)
    t.qformer[0, 0] += 1.0
    # masked mean over the 5 valid windows of mean_d (s - t)^2, by hand
    valid = s.qformer_mask
    per_window = ((s.qformer.detach() - t.qformer) ** 2).mean(-1)
    expected = float(per_window[valid].sum() / valid.sum())
    assert abs(expected - float(base.detach())) > 1e-3  # the changed window counts
    assert loss(s, t).metrics["loss"] == pytest.approx(expected, abs=1e-12)
    s.qformer_mask[:] = False
    t.qformer_mask[:] = False
    assert loss(s, t).loss.item() == 0.0


def test_projection_registered_and_trained():
    s, t = pair(ds=4, dt=6, seed=3)
    loss = FeatureMSE(fields=["qformer"], widths={"qformer": (4, 6)}).double()
    assert "proj.qformer.weight" in dict(loss.named_parameters())
    loss(s, t).loss.backward()
    assert loss.proj["qformer"].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="widths"):
        FeatureMSE()(s, t)


def test_gradcheck_and_zero_grad_on_padding():
    s, t = pair(b=2, w=3, seed=4, valid=[3, 1])
    loss = FeatureMSE(metric="cosine")

    def f(x):
        return loss(dataclasses.replace(s, qformer=x), t).loss

    assert torch.autograd.gradcheck(f, (s.qformer,))
    (g,) = torch.autograd.grad(f(s.qformer), s.qformer)
    assert g[1, 1:].abs().max().item() == 0.0
