"""GeneralizedJSD: endpoints, closed form, float64 reference parity, gradients, masking, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from distill._instantiate import instantiate
from distill.contracts import ModelOutputs, TeacherSignals
from losses import DDAT, GeneralizedJSD, LossInputError, TokenKL
from losses.align import align_positions, shared_vocab

from .conftest import make_pair, pad_batch


def reference_divergence(s_logits, t_logits, beta, T):
    """Per-position [b, n] JSD_beta in float64, straight from the definition (probability space)."""
    lq = torch.log_softmax(s_logits.double() / T, dim=-1)
    lp = torch.log_softmax(t_logits.double() / T, dim=-1)
    q, p = torch.softmax(s_logits.double() / T, -1), torch.softmax(t_logits.double() / T, -1)
    if beta == 0:  # forward KL(p || q), through torch's own kl_div
        return F.kl_div(lq, lp, reduction="none", log_target=True).sum(-1)
    if beta == 1:  # reverse KL(q || p)
        return (q * (lq - lp)).sum(-1)
    log_m = torch.log(beta * p + (1 - beta) * q)
    return beta * (p * (lp - log_m)).sum(-1) + (1 - beta) * (q * (lq - log_m)).sum(-1)


def reference_loss(student, teacher, beta, T, ce_weight=0.0):
    """Masked token mean of the reference divergence (+ CE at T = 1), float64."""
    mask = student.mask & teacher.mask
    d = reference_divergence(student.logits, teacher.logits, beta, T)
    denom = student.num_tokens if student.num_tokens is not None else float(mask.sum())
    loss = torch.where(mask, d, 0.0).sum() / max(denom, 1.0)
    if ce_weight:
        lp = torch.log_softmax(student.logits.double(), -1)
        ce = -lp.gather(-1, student.token_ids.unsqueeze(-1)).squeeze(-1)
        ce_denom = (
            student.num_tokens if student.num_tokens is not None else float(student.mask.sum())
        )
        loss = loss + ce_weight * torch.where(student.mask, ce, 0.0).sum() / max(ce_denom, 1.0)
    return loss


def cast(student, teacher, dtype):
    s = ModelOutputs(
        mask=student.mask,
        token_ids=student.token_ids,
        logits=student.logits.detach().to(dtype).requires_grad_(True),
    )
    t = TeacherSignals(
        mask=teacher.mask, token_ids=teacher.token_ids, logits=teacher.logits.to(dtype)
    )
    return s, t


# ------------------------------------------------------------------ endpoints and closed form
@pytest.mark.parametrize("T", [1.0, 2.0])
@pytest.mark.parametrize("chunk", [None, 2])
def test_beta_zero_is_forward_kl(T, chunk):
    s, t = make_pair(b=3, n=5, v=6, seed=1)
    got = GeneralizedJSD(beta=0.0, temperature=T, chunk_size=chunk)(s, t).loss
    assert_close(got, reference_loss(s, t, 0.0, T), atol=1e-12, rtol=0)


@pytest.mark.parametrize("T", [1.0, 2.0])
@pytest.mark.parametrize("chunk", [None, 2])
def test_beta_one_is_reverse_kl(T, chunk):
    s, t = make_pair(b=3, n=5, v=6, seed=2)
    got = GeneralizedJSD(beta=1.0, temperature=T, chunk_size=chunk)(s, t).loss
    assert_close(got, reference_loss(s, t, 1.0, T), atol=1e-12, rtol=0)


def test_endpoints_agree_with_token_kl_at_t1():
    s, t = make_pair(b=2, n=4, v=5, seed=3)
    for beta, kind in ((0.0, "forward"), (1.0, "reverse")):
        want = TokenKL(temperature=1.0, ce_weight=0.0, divergence=kind)(s, t).metrics["kd"]
        got = GeneralizedJSD(beta=beta, temperature=1.0)(s, t).metrics["kd"]
        assert_close(got, want, atol=1e-12, rtol=0)


def test_hand_derived_value():
    """Vocab 2, T = 1, beta = 1/2: p = (3/4, 1/4) from logits (log 3, 0), q = (1/2, 1/2), so
    m = (5/8, 3/8) and
        JSD = 1/2 [3/4 log(6/5) + 1/4 log(2/3)] + 1/2 [1/2 log(4/5) + 1/2 log(4/3)]."""
    mask = torch.ones(1, 1, dtype=torch.bool)
    ids = torch.zeros(1, 1, dtype=torch.long)
    s = ModelOutputs(mask=mask, token_ids=ids, logits=torch.zeros(1, 1, 2, dtype=torch.float64))
    t = TeacherSignals(
        mask=mask, token_ids=ids, logits=torch.tensor([[[math.log(3), 0.0]]], dtype=torch.float64)
    )
    want = 0.5 * (0.75 * math.log(6 / 5) + 0.25 * math.log(2 / 3)) + 0.5 * (
        0.5 * math.log(4 / 5) + 0.5 * math.log(4 / 3)
    )
    assert GeneralizedJSD(beta=0.5)(s, t).loss.item() == pytest.approx(want, abs=1e-14)
    # with ce_weight 1 the CE of target id 0 under q, log 2, is added
    out = GeneralizedJSD(beta=0.5, ce_weight=1.0)(s, t)
    assert out.metrics["loss"] == pytest.approx(want + math.log(2), abs=1e-14)
    assert out.metrics["ce"] == pytest.approx(math.log(2), abs=1e-14)


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_equal_inputs_give_zero(beta):
    s, t = make_pair()
    t = TeacherSignals(mask=t.mask, token_ids=t.token_ids, logits=s.logits.detach().clone())
    assert_close(GeneralizedJSD(beta=beta)(s, t).loss, torch.zeros((), dtype=torch.float64))


# ------------------------------------------------------------------ parity with the reference
@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("T", [1.0, 1.7])
def test_intermediate_beta_matches_reference(beta, T):
    s, t = make_pair(b=3, n=6, v=11, seed=4)
    want = reference_loss(s, t, beta, T)
    got64 = GeneralizedJSD(beta=beta, temperature=T, chunk_size=4)(s, t).loss
    assert_close(got64, want, atol=1e-12, rtol=0)
    s32, t32 = cast(s, t, torch.float32)  # the fp32 path against the fp64 reference
    got32 = GeneralizedJSD(beta=beta, temperature=T, chunk_size=4)(s32, t32).loss
    assert got32.dtype == torch.float32
    assert abs(got32.item() - want.item()) <= 1e-6


def test_ce_weight_adds_reference_ce():
    s, t = make_pair(b=2, n=5, v=7, seed=5)
    got = GeneralizedJSD(beta=0.4, temperature=2.0, ce_weight=0.7)(s, t).loss
    assert_close(got, reference_loss(s, t, 0.4, 2.0, ce_weight=0.7), atol=1e-12, rtol=0)


def test_golden_value():
    """Pins the objective: a refactor that changes the maths fails here."""
    s, t = make_pair(seed=0)
    got = GeneralizedJSD(beta=0.5, temperature=2.0)(s, t).loss.item()
    assert got == pytest.approx(reference_loss(s, t, 0.5, 2.0).item(), abs=1e-12)
    assert got == pytest.approx(GOLDEN_B05_T2, abs=1e-10)


GOLDEN_B05_T2 = 0.046703254599381


# ------------------------------------------------------------------ gradients
@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_gradients_match_reference(beta):
    s, t = make_pair(b=2, n=5, v=6, seed=6, lengths=[5, 2])
    loss = GeneralizedJSD(beta=beta, temperature=1.5, ce_weight=0.5, chunk_size=2)(s, t).loss
    (got,) = torch.autograd.grad(loss, s.logits)
    (want,) = torch.autograd.grad(reference_loss(s, t, beta, 1.5, ce_weight=0.5), s.logits)
    assert_close(got, want, atol=1e-12, rtol=0)
    assert got[1, 2:].abs().max().item() == 0.0  # padding gets no gradient
    assert got[0].abs().max().item() > 1e-3


def test_gradcheck():
    s, t = make_pair(b=2, n=3, v=4, seed=7, lengths=[3, 1])
    loss_fn = GeneralizedJSD(beta=0.25, temperature=1.3, chunk_size=2)

    def f(x):
        return loss_fn(ModelOutputs(mask=s.mask, token_ids=s.token_ids, logits=x), t).loss

    assert torch.autograd.gradcheck(f, (s.logits,))


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_minus_inf_vocabulary_entries_are_dropped(beta):
    """An id at -inf on both sides (a masked vocabulary entry) is as if it did not exist."""
    s, t = make_pair(b=2, n=3, v=5, seed=8)
    s_inf = s.logits.detach().clone()
    s_inf[..., 4] = -math.inf
    t_inf = t.logits.clone()
    t_inf[..., 4] = -math.inf
    s_inf.requires_grad_(True)
    got = GeneralizedJSD(beta=beta)(
        ModelOutputs(mask=s.mask, token_ids=s.token_ids, logits=s_inf),
        TeacherSignals(mask=t.mask, token_ids=t.token_ids, logits=t_inf),
    ).loss
    (g,) = torch.autograd.grad(got, s_inf)
    cut = s.logits[..., :4].detach().requires_grad_(True)
    want = reference_loss(
        ModelOutputs(mask=s.mask, token_ids=s.token_ids, logits=cut),
        TeacherSignals(mask=t.mask, token_ids=t.token_ids, logits=t.logits[..., :4]),
        beta,
        1.0,
    )
    (g_want,) = torch.autograd.grad(want, cut)
    assert_close(got, want, atol=1e-12, rtol=0)
    assert torch.isfinite(g).all() and g[..., 4].abs().max().item() == 0.0
    assert_close(g[..., :4], g_want, atol=1e-12, rtol=0)


# ------------------------------------------------------------------ masking and normalisation
def test_padding_the_batch_changes_nothing():
    s, t = make_pair(b=2, n=4, v=5, seed=9)
    s2, t2 = pad_batch(s, t)
    loss = GeneralizedJSD(beta=0.3, chunk_size=3)
    assert_close(loss(s2, t2).loss, loss(s, t).loss, atol=1e-12, rtol=0)


def test_teacher_mask_excludes_tokens():
    s, t = make_pair(b=2, n=4, v=5, seed=10, lengths=[4, 4])
    t.mask = t.mask.clone()  # make_pair shares one mask tensor between the two sides
    t.mask[0, 2:] = False  # the teacher scored only the first two tokens of item 0
    got = GeneralizedJSD(beta=0.6)(s, t).loss
    assert_close(got, reference_loss(s, t, 0.6, 1.0), atol=1e-12, rtol=0)
    assert GeneralizedJSD(beta=0.6)(s, t).metrics["aligned"] == pytest.approx(6 / 8)


def test_all_masked_gives_zero():
    s, t = make_pair()
    s.mask[:] = False
    t.mask[:] = False
    out = GeneralizedJSD(beta=0.5, ce_weight=1.0)(s, t)
    assert out.loss.item() == 0.0
    (g,) = torch.autograd.grad(out.loss, s.logits, allow_unused=True)
    assert g is None or g.abs().max().item() == 0.0


def test_num_tokens_normalises_globally():
    s, t = make_pair(b=2, n=4, v=5, seed=11)
    local = GeneralizedJSD(beta=0.5)(s, t).loss
    s.num_tokens = 2 * float(s.mask.sum())
    assert_close(GeneralizedJSD(beta=0.5)(s, t).loss, local / 2, atol=1e-12, rtol=0)


def test_each_item_counts():
    s, t = make_pair(b=2, n=3, v=5, seed=12)
    t.logits[1, 0, 0] += 3.0
    got = GeneralizedJSD(beta=0.5)(s, t).loss
    assert_close(got, reference_loss(s, t, 0.5, 1.0), atol=1e-12, rtol=0)


# ------------------------------------------------------------------ cross-tokenizer
ANSWERS = ["the dog barks in the park", "a cat sat on the mat"]


def test_shared_vocab_path_matches_reference(bpe, wordlevel):
    student = wordlevel.outputs(ANSWERS, seed=1)
    teacher = bpe.outputs(ANSWERS, seed=2, teacher=True)
    out = GeneralizedJSD(beta=0.3, temperature=1.5, chunk_size=2)(student, teacher)
    s_ids, t_ids = shared_vocab(wordlevel.info, bpe.info)
    index, paired = align_positions(student.offsets, student.mask, teacher.offsets, teacher.mask)
    rows = teacher.logits.gather(1, index.unsqueeze(-1).expand(-1, -1, teacher.logits.shape[-1]))
    d = reference_divergence(student.logits[..., s_ids], rows[..., t_ids], 0.3, 1.5)
    assert int(paired.sum()) >= 4
    want = torch.where(paired, d, 0.0).sum() / paired.sum()
    assert_close(out.loss, want, atol=1e-12, rtol=0)
    (g,) = torch.autograd.grad(out.loss, student.logits)
    (g_want,) = torch.autograd.grad(want, student.logits)
    assert_close(g, g_want, atol=1e-12, rtol=0)


# ------------------------------------------------------------------ errors and registration
@pytest.mark.parametrize("beta", [-0.1, 1.1, float("nan")])
def test_invalid_beta_raises(beta):
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\]"):
        GeneralizedJSD(beta=beta)


@pytest.mark.parametrize("T", [0.0, -1.0, float("nan"), float("inf")])
def test_invalid_temperature_raises(T):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        GeneralizedJSD(temperature=T)


def test_sparse_teacher_raises():
    s, t = make_pair()
    sparse = TeacherSignals.from_outputs(
        ModelOutputs(mask=t.mask, token_ids=t.token_ids, logits=t.logits), topk=3
    )
    with pytest.raises(LossInputError, match="dense logits"):
        GeneralizedJSD()(s, sparse)


def test_builds_from_config_under_the_allow_list():
    loss = instantiate(
        {"_component_": "losses.GeneralizedJSD", "beta": 0.2, "temperature": 0.9},
        allowed_prefixes=["losses."],
    )
    assert isinstance(loss, GeneralizedJSD) and (loss.beta, loss.temperature) == (0.2, 0.9)


def test_divergence_plugs_into_ddat():
    s, t = make_pair(b=2, n=4, v=5, seed=13)
    gjsd = GeneralizedJSD(beta=0.5, ce_weight=1.0)
    assert_close(gjsd.divergence(s, t).loss, reference_loss(s, t, 0.5, 1.0), atol=1e-12, rtol=0)
    out = DDAT(gjsd, mode="per_token")(s, t)
    assert torch.isfinite(out.loss)
