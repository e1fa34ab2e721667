"""Pinned objective values (torchdistill style): a refactor that changes the maths fails here.

Regenerate deliberately with `DISTILL_UPDATE_GOLDEN=1 pytest tests/losses/test_golden.py`
and explain the change in the commit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from distill.contracts import ModelOutputs, TeacherSignals
from losses import CE, DDAT, ULD, FeatureMSE, MultiLevelOT, QFormerContrastive, TokenKL

from .conftest import make_pair

GOLDEN = Path(__file__).with_name("golden.json")


def _features(seed: int):
    s, t = make_pair(b=2, n=4, v=11, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    q_mask = torch.tensor([[True, True, True], [True, True, False]])
    s = ModelOutputs(
        mask=s.mask,
        token_ids=s.token_ids,
        logits=s.logits,
        qformer_mask=q_mask,
        qformer=torch.randn(2, 3, 4, generator=g, dtype=torch.float64),
    )
    t = TeacherSignals(
        mask=t.mask,
        token_ids=t.token_ids,
        logits=t.logits,
        qformer_mask=q_mask,
        qformer=torch.randn(2, 3, 4, generator=g, dtype=torch.float64),
    )
    return s, t


def compute() -> dict[str, float]:
    s, t = _features(0)
    sparse = TeacherSignals.from_outputs(
        ModelOutputs(mask=t.mask, token_ids=t.token_ids, logits=t.logits), topk=4
    )
    cases = {
        "token_kl_forward_T2": TokenKL(temperature=2.0)(s, t),
        "token_kl_reverse_T1": TokenKL(temperature=1.0, divergence="reverse")(s, t),
        "token_kl_jsd": TokenKL(divergence="jsd", beta=0.3)(s, t),
        "token_kl_skew": TokenKL(divergence="skew", skew=0.2)(s, t),
        "token_kl_topk4_renorm": TokenKL(topk_mode="renorm")(s, sparse),
        "token_kl_topk4_tail_T1": TokenKL(temperature=1.0, topk_mode="tail")(s, sparse),
        "multilevel_ot_k5": MultiLevelOT(topk=5)(s, t),
        "uld": ULD()(s, t),
        "ddat_batch_ema": DDAT(TokenKL(temperature=3.0))(s, t),
        "ddat_per_token": DDAT(TokenKL(temperature=3.0), mode="per_token")(s, t),
        "contrastive_tau0.1": QFormerContrastive(temperature=0.1)(s, t),
        "feature_mse": FeatureMSE()(s, t),
        "feature_cosine": FeatureMSE(metric="cosine")(s, t),
        "ce": CE()(s, t),
    }
    return {name: float(out.loss.detach()) for name, out in cases.items()}


def test_golden_values():
    values = compute()
    if os.environ.get("DISTILL_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
    pinned = json.loads(GOLDEN.read_text())
    assert sorted(pinned) == sorted(values)
    for name, value in pinned.items():
        assert values[name] == pytest.approx(value, rel=1e-9, abs=1e-9), name
