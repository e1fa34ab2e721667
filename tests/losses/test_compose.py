"""Compose, LinearWarmup and the CE baseline: metrics, schedules, state, YAML building."""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from torch.testing import assert_close

from distill._instantiate import instantiate
from distill.contracts import ModelOutputs
from losses import CE, Compose, FeatureMSE, LinearWarmup, TokenKL

from .conftest import make_pair, pad_batch


def test_weighted_sum_and_metric_names():
    s, t = make_pair(seed=1)
    kl, ce = TokenKL(), CE()
    loss = Compose(terms={"kl": kl, "ce": ce}, weights={"kl": 0.5, "ce": 2.0})
    out = loss(s, t)
    want = 0.5 * kl(s, t).loss + 2.0 * ce(s, t).loss
    assert_close(out.loss, want)
    assert out.metrics["loss"] == pytest.approx(float(want.detach()))
    assert {"kl/kd", "kl/ce", "kl/weight", "ce/ce", "ce/weight"} <= set(out.metrics)


def test_warmup_schedule_and_step_buffer():
    s, t = make_pair(seed=2)
    loss = Compose(
        terms={"ce": CE(), "kl": TokenKL(ce_weight=0.0)}, schedules={"kl": LinearWarmup(steps=4)}
    )
    weights = []
    for step in range(6):
        # two micro-batches per optimizer step see the same weight
        weights.append([loss(s, t).metrics["kl/weight"] for _ in range(2)])
        loss.on_step(step + 1)
    assert weights == [[w, w] for w in (0.0, 0.25, 0.5, 0.75, 1.0, 1.0)]
    assert int(loss.step) == 6 and "step" in loss.state_dict()
    fresh = Compose(
        terms={"ce": CE(), "kl": TokenKL(ce_weight=0.0)}, schedules={"kl": LinearWarmup(steps=4)}
    )
    fresh.load_state_dict(loss.state_dict())
    assert fresh.weight("kl") == 1.0


def test_unknown_names_are_errors():
    with pytest.raises(ValueError, match="unknown terms"):
        Compose(terms={"ce": CE()}, weights={"kl": 1.0})


def test_built_from_yaml_by_dotted_path():
    config = yaml.safe_load(
        """
        _component_: losses.Compose
        terms:
          kl: {_component_: losses.TokenKL, temperature: 2.0}
          feat: {_component_: losses.FeatureMSE, fields: [qformer], widths: {qformer: [4, 6]}}
        weights: {kl: 1.0, feat: 0.5}
        schedules: {feat: {_component_: losses.LinearWarmup, steps: 10}}
        """
    )
    loss = instantiate(config)
    assert isinstance(loss.terms["kl"], TokenKL) and isinstance(loss.terms["feat"], FeatureMSE)
    assert "terms.feat.proj.qformer.weight" in dict(loss.named_parameters())


def test_ce_closed_form_naive_invariants_and_gradcheck():
    """Uniform logits over v give CE = log v exactly."""
    s, t = make_pair(b=2, n=3, v=5, seed=3, lengths=[3, 1])
    uniform = ModelOutputs(
        mask=s.mask, token_ids=s.token_ids, logits=torch.zeros(2, 3, 5, dtype=torch.float64)
    )
    assert CE()(uniform).metrics["loss"] == pytest.approx(math.log(5), abs=1e-12)
    naive = [
        -float(s.logits[b, i].detach().log_softmax(-1)[s.token_ids[b, i]])
        for b in range(2)
        for i in range(3)
        if s.mask[b, i]
    ]
    assert CE(chunk_size=2)(s, t).metrics["loss"] == pytest.approx(
        sum(naive) / len(naive), abs=1e-12
    )
    s2, t2 = pad_batch(s, t)
    assert_close(CE()(s2, t2).loss, CE()(s, t).loss, atol=1e-12, rtol=0)

    def f(x):
        return CE(chunk_size=2)(ModelOutputs(mask=s.mask, token_ids=s.token_ids, logits=x)).loss

    assert torch.autograd.gradcheck(f, (s.logits,))
    (g,) = torch.autograd.grad(f(s.logits), s.logits)
    assert g[1, 1:].abs().max().item() == 0.0
    s.mask[:] = False
    assert CE()(s).loss.item() == 0.0
