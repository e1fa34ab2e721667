"""TokenKL: closed form, naive parity, invariants, gradients, sparse teachers, cross-tokenizer paths."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from distill.contracts import ModelOutputs, TeacherSignals
from losses import LossInputError, NonFiniteError, TokenKL
from losses.align import align_positions, shared_vocab

from .conftest import make_pair, pad_batch


def naive_divergence(s_row, t_row, kind, beta=0.5, skew=0.1):
    """Straight from the definitions, one position at a time (rows are log-probs)."""
    ps, pt = s_row.exp(), t_row.exp()

    def kl(p, lp, lq):
        return sum(float(p[i]) * (float(lp[i]) - float(lq[i])) for i in range(len(p)) if p[i] > 0)

    if kind == "forward":
        return kl(pt, t_row, s_row)
    if kind == "reverse":
        return kl(ps, s_row, t_row)
    if kind == "symmetric":
        return beta * kl(pt, t_row, s_row) + (1 - beta) * kl(ps, s_row, t_row)
    m = (beta * pt + (1 - beta) * ps) if kind == "jsd" else (skew * pt + (1 - skew) * ps)
    if kind == "jsd":
        return beta * kl(pt, t_row, m.log()) + (1 - beta) * kl(ps, s_row, m.log())
    return kl(pt, t_row, m.log())


def naive_token_kl(student, teacher, kind="forward", T=2.0, ce_weight=1.0):
    kd, ce, count = 0.0, 0.0, 0
    for b in range(student.mask.shape[0]):
        for i in range(student.mask.shape[1]):
            if not student.mask[b, i]:
                continue
            lp_s = torch.log_softmax(student.logits[b, i].detach() / T, -1)
            lp_t = torch.log_softmax(teacher.logits[b, i] / T, -1)
            kd += naive_divergence(lp_s, lp_t, kind) * T * T
            ce -= float(
                torch.log_softmax(student.logits[b, i].detach(), -1)[student.token_ids[b, i]]
            )
            count += 1
    return (kd + ce_weight * ce) / max(count, 1)


@pytest.mark.parametrize("kind", ["forward", "reverse", "symmetric", "jsd", "skew"])
def test_equal_inputs_give_zero_kd(kind):
    s, t = make_pair()
    t = TeacherSignals(mask=t.mask, token_ids=t.token_ids, logits=s.logits.detach().clone())
    out = TokenKL(divergence=kind, ce_weight=0.0)(s, t)
    assert_close(out.loss, torch.zeros((), dtype=torch.float64), atol=1e-12, rtol=0)


def test_hand_derived_value():
    """Vocab 2, T = 1, one token: p_t = (3/4, 1/4) from logits (log 3, 0), p_s = (1/2, 1/2).
    KL(p_t || p_s) = 3/4 log(3/4 / 1/2) + 1/4 log(1/4 / 1/2) = 3/4 log 1.5 - 1/4 log 2.
    CE of target id 0 under p_s = log 2. With ce_weight 1: loss = KL + log 2."""
    mask = torch.ones(1, 1, dtype=torch.bool)
    ids = torch.zeros(1, 1, dtype=torch.long)
    s = ModelOutputs(mask=mask, token_ids=ids, logits=torch.zeros(1, 1, 2, dtype=torch.float64))
    t = TeacherSignals(
        mask=mask, token_ids=ids, logits=torch.tensor([[[math.log(3), 0.0]]], dtype=torch.float64)
    )
    out = TokenKL(temperature=1.0)(s, t)
    kl = 0.75 * math.log(1.5) - 0.25 * math.log(2)
    assert out.metrics["kd"] == pytest.approx(kl, abs=1e-12)
    assert out.metrics["loss"] == pytest.approx(kl + math.log(2), abs=1e-12)


@pytest.mark.parametrize("kind", ["forward", "reverse", "symmetric", "jsd", "skew"])
def test_matches_naive_reference(kind):
    s, t = make_pair(b=3, n=5, v=6, seed=1)
    out = TokenKL(divergence=kind, temperature=2.0, chunk_size=2)(s, t)
    assert out.metrics["loss"] == pytest.approx(naive_token_kl(s, t, kind), abs=1e-10)


def test_chunked_equals_unchunked_values_and_grads():
    s, t = make_pair(b=2, n=7, v=9, seed=2)
    full = TokenKL(chunk_size=None)(s, t).loss
    (g_full,) = torch.autograd.grad(full, s.logits)
    for cs in (1, 3, 4):
        part = TokenKL(chunk_size=cs)(s, t).loss
        (g_part,) = torch.autograd.grad(part, s.logits)
        assert_close(part, full, atol=1e-12, rtol=0)
        assert_close(g_part, g_full, atol=1e-12, rtol=0)


def test_padding_the_batch_changes_nothing():
    s, t = make_pair(b=2, n=4, v=5, seed=3)
    s2, t2 = pad_batch(s, t)
    assert_close(
        TokenKL(chunk_size=3)(s2, t2).loss, TokenKL(chunk_size=3)(s, t).loss, atol=1e-12, rtol=0
    )


def test_all_masked_gives_zero():
    s, t = make_pair()
    s.mask[:] = False
    t.mask[:] = False
    out = TokenKL()(s, t)
    assert out.loss.item() == 0.0
    (g,) = torch.autograd.grad(out.loss, s.logits, allow_unused=True)
    assert g is None or g.abs().max().item() == 0.0


def test_each_item_counts():
    s, t = make_pair(b=2, n=3, v=5, seed=4)
    base = TokenKL()(s, t).metrics["loss"]
    t.logits[0, 0, 0] += 3.0
    moved = TokenKL()(s, t).metrics["loss"]
    assert moved == pytest.approx(naive_token_kl(s, t), abs=1e-10)
    assert abs(moved - base) > 1e-4


def test_num_tokens_normalises_globally():
    s, t = make_pair(b=2, n=4, v=5, seed=5)
    local = TokenKL()(s, t).loss
    s.num_tokens = 2 * float(s.mask.sum())
    assert_close(TokenKL()(s, t).loss, local / 2, atol=1e-12, rtol=0)


def test_gradcheck_and_zero_grad_on_padding():
    s, t = make_pair(b=2, n=3, v=4, seed=6, lengths=[3, 1])
    loss_fn = TokenKL(chunk_size=2, divergence="jsd")

    def f(x):
        return loss_fn(ModelOutputs(mask=s.mask, token_ids=s.token_ids, logits=x), t).loss

    assert torch.autograd.gradcheck(f, (s.logits,))
    (g,) = torch.autograd.grad(f(s.logits), s.logits)
    assert g[1, 1:].abs().max().item() == 0.0


@pytest.mark.parametrize("mode", ["renorm", "tail"])
def test_full_topk_equals_dense_at_t1(mode):
    s, t = make_pair(b=2, n=3, v=6, seed=7)
    sparse = TeacherSignals.from_outputs(
        ModelOutputs(mask=t.mask, token_ids=t.token_ids, logits=t.logits), topk=6
    )
    dense = TokenKL(temperature=1.0)(s, t).loss
    assert_close(
        TokenKL(temperature=1.0, topk_mode=mode)(s, sparse).loss, dense, atol=1e-6, rtol=0
    )  # top-k stored in fp32


def test_topk_renorm_matches_naive_restriction():
    s, t = make_pair(b=1, n=2, v=8, seed=8)
    sparse = TeacherSignals.from_outputs(
        ModelOutputs(mask=t.mask, token_ids=t.token_ids, logits=t.logits), topk=3
    )
    got = TokenKL(temperature=2.0, ce_weight=0.0, topk_mode="renorm")(s, sparse).metrics["kd"]
    want = 0.0
    for i in range(2):
        idx = sparse.topk_indices[0, i]
        lp_s = torch.log_softmax(s.logits[0, i, idx].detach() / 2, -1)
        lp_t = torch.log_softmax(t.logits[0, i, idx] / 2, -1)
        want += naive_divergence(lp_s, lp_t, "forward") * 4 / 2
    assert got == pytest.approx(want, abs=1e-7)  # top-k values are stored in fp32


def test_tail_bucket_keeps_outside_mass():
    """k = 1 at T = 1: the tail bucket holds 1 - p_top, so KL is over two bins."""
    s, t = make_pair(b=1, n=1, v=5, seed=10)
    sparse = TeacherSignals.from_outputs(
        ModelOutputs(mask=t.mask, token_ids=t.token_ids, logits=t.logits), topk=1
    )
    got = TokenKL(temperature=1.0, ce_weight=0.0, topk_mode="tail")(s, sparse).metrics["kd"]
    j = int(sparse.topk_indices[0, 0, 0])
    pt, ps = t.logits[0, 0].softmax(-1)[j], s.logits[0, 0].detach().softmax(-1)[j]
    want = float(pt * (pt / ps).log() + (1 - pt) * ((1 - pt) / (1 - ps)).log())
    assert got == pytest.approx(want, abs=1e-6)  # top-k values are stored in fp32


def test_errors_name_the_problem():
    s, t = make_pair()
    bad = make_pair(b=3)[1]
    with pytest.raises(LossInputError, match="batch"):
        TokenKL()(s, bad)
    logits = s.logits.detach().clone()
    logits[0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="student.logits"):
        TokenKL()(ModelOutputs(mask=s.mask, token_ids=s.token_ids, logits=logits), t)


def test_teacher_minus_inf_is_a_legal_mask():
    s, t = make_pair(b=1, n=2, v=5, seed=11)
    t.logits[..., -1] = -math.inf
    out = TokenKL(ce_weight=0.0)(s, t)
    assert math.isfinite(out.metrics["kd"])
    (g,) = torch.autograd.grad(out.loss, s.logits)
    assert torch.isfinite(g).all()


# ------------------------------------------------------------------ cross-tokenizer
ANSWERS = ["the dog barks in the park", "a cat sat on the mat"]


def test_alignment_pairs_identical_spans(bpe, wordlevel):
    s_ids, s_off, s_mask = wordlevel.encode(ANSWERS)
    t_ids, t_off, t_mask = bpe.encode(ANSWERS)
    index, paired = align_positions(s_off, s_mask, t_off, t_mask)
    for b in range(2):
        for i in range(s_ids.shape[1]):
            if paired[b, i]:
                assert s_off[b, i].tolist() == t_off[b, index[b, i]].tolist()
        last = int(s_mask[b].sum()) - 1  # the end symbols pair with each other
        assert paired[b, last] and int(t_ids[b, index[b, last]]) == bpe.end_id


def test_shared_vocab_path_matches_naive(bpe, wordlevel):
    student = wordlevel.outputs(ANSWERS, seed=1)
    teacher = bpe.outputs(ANSWERS, seed=2, teacher=True)
    out = TokenKL(temperature=1.0, ce_weight=0.0, chunk_size=2)(student, teacher)
    s_ids, t_ids = shared_vocab(wordlevel.info, bpe.info)
    assert [wordlevel.info.pieces[i] for i in s_ids] == [bpe.info.pieces[i] for i in t_ids]
    index, paired = align_positions(student.offsets, student.mask, teacher.offsets, teacher.mask)
    want, count = 0.0, 0
    for b in range(2):
        for i in range(student.mask.shape[1]):
            if paired[b, i]:
                lp_s = torch.log_softmax(student.logits[b, i, s_ids].detach(), -1)
                lp_t = torch.log_softmax(teacher.logits[b, index[b, i], t_ids], -1)
                want += naive_divergence(lp_s, lp_t, "forward")
                count += 1
    assert count >= 4
    assert out.metrics["kd"] == pytest.approx(want / count, abs=1e-10)
    out.loss.backward()
    assert torch.isfinite(student.logits.grad).all()


def test_bridge_is_trained_and_saved(bpe, wordlevel):
    student = wordlevel.outputs(ANSWERS, seed=1)
    teacher = bpe.outputs(ANSWERS, seed=2, teacher=True)
    loss = TokenKL(
        cross_tokenizer="bridge",
        bridge_vocab=(bpe.info.vocab_size, wordlevel.info.vocab_size),
        bridge_rank=4,
    )
    loss = loss.double()
    names = {n for n, _ in loss.named_parameters()}
    assert names and all(n.startswith("bridge.") for n in names)
    assert set(loss.state_dict()) == names
    out = loss(student, teacher)
    out.loss.backward()
    for p in loss.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert out.metrics["bridge_ce"] > 0


def test_bridge_requires_sizes():
    with pytest.raises(ValueError, match="bridge_vocab"):
        TokenKL(cross_tokenizer="bridge")


def test_no_aligned_token_is_an_error(bpe, wordlevel):
    student = wordlevel.outputs(["the dog"], seed=1)
    teacher = bpe.outputs(["the dog"], seed=2, teacher=True)
    teacher.offsets[..., 0] += 100  # spans no longer coincide
    with pytest.raises(LossInputError, match="aligned"):
        TokenKL()(student, teacher)


def test_fused_forward_path_gradcheck_and_matches_generic():
    """Forward KL with a dense same-vocab teacher takes the closed-form backward path."""
    s, t = make_pair(b=2, n=5, v=4, seed=12, lengths=[5, 2])
    t.logits[0, 0, 1] = -math.inf

    def f(x, chunk):
        return TokenKL(temperature=1.5, chunk_size=chunk)(
            ModelOutputs(mask=s.mask, token_ids=s.token_ids, logits=x), t
        ).loss

    assert torch.autograd.gradcheck(lambda x: f(x, 2), (s.logits,))
    (g_fused,) = torch.autograd.grad(f(s.logits, 2), s.logits)
    (g_generic,) = torch.autograd.grad(f(s.logits, None), s.logits)
    assert_close(g_fused, g_generic, atol=1e-12, rtol=0)
    assert g_fused[1, 2:].abs().max().item() == 0.0


def test_sparse_teacher_across_tokenizers(bpe, wordlevel):
    """A top-k teacher holding its whole vocabulary equals the dense shared-vocabulary path."""
    student = wordlevel.outputs(ANSWERS, seed=1)
    teacher = bpe.outputs(ANSWERS, seed=2, teacher=True)
    sparse = TeacherSignals.from_outputs(
        ModelOutputs(
            mask=teacher.mask,
            token_ids=teacher.token_ids,
            logits=teacher.logits,
            offsets=teacher.offsets,
            tokenizer=teacher.tokenizer,
        ),
        topk=bpe.info.vocab_size,
    )
    dense = float(TokenKL(ce_weight=0.0)(student, teacher).metrics["kd"])
    assert TokenKL(ce_weight=0.0)(student, sparse).metrics["kd"] == pytest.approx(dense, abs=1e-6)
    with pytest.raises(LossInputError, match="tail"):
        TokenKL(topk_mode="tail")(student, sparse)


def test_end_rule_pairs_on_the_last_character():
    """Student "wa"+"ter" vs teacher "water": exact pairs nothing, "end" pairs "ter" with "water"."""
    s_off = torch.tensor([[[0, 2], [2, 5], [5, 5]]])
    t_off = torch.tensor([[[0, 5], [5, 5]]])
    s_mask, t_mask = torch.ones(1, 3, dtype=torch.bool), torch.ones(1, 2, dtype=torch.bool)
    index, paired = align_positions(s_off, s_mask, t_off, t_mask, rule="exact")
    assert paired.tolist() == [[False, False, True]] and int(index[0, 2]) == 1
    index, paired = align_positions(s_off, s_mask, t_off, t_mask, rule="end")
    assert paired.tolist() == [[False, True, True]] and index[0, 1:].tolist() == [0, 1]


@pytest.mark.parametrize("kind", ["reverse", "symmetric", "jsd"])
def test_sparse_shared_vocab_gradient_is_finite(bpe, wordlevel, kind):
    """Ids outside the shared top-k are -inf on both sides: their 0 * (-inf - -inf) must
    not turn the gradient into NaN (it did before xlogy_diff masked the difference)."""
    student = wordlevel.outputs(ANSWERS, seed=1)
    teacher = bpe.outputs(ANSWERS, seed=2, teacher=True)
    vals, idx = teacher.logits.topk(16, dim=-1)
    sparse = TeacherSignals(
        mask=teacher.mask,
        token_ids=teacher.token_ids,
        offsets=teacher.offsets,
        tokenizer=teacher.tokenizer,
        topk_values=vals,
        topk_indices=idx,
        vocab_size=bpe.info.vocab_size,
    )
    TokenKL(divergence=kind, chunk_size=3)(student, sparse).loss.backward()
    assert torch.isfinite(student.logits.grad).all()
    assert student.logits.grad.abs().sum() > 0
