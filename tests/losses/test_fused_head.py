"""Fused hidden -> logits losses: the same loss and gradients as the materialised path.

A fused student hands the loss h [b, n, d] and its head instead of logits = head(h). For
CE, TokenKL (every divergence, dense and sparse teachers, both cross-tokenizer modes) and
DDAT over TokenKL (both modes), the loss and the gradients of h, the head's weight and
bias and a TokenKL bridge must equal the materialised path's (fp64 to 1e-10, fp32 to 1e-5).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from distill.contracts import ModelOutputs, TeacherSignals
from losses import CE, DDAT, MultiLevelOT, TokenKL
from losses._fused_head import linear_terms
from losses._reduce import LossInputError
from losses.token_kl import DIVERGENCES
from tests.losses.conftest import make_pair

ANSWERS = ["the dog barks in the park", "a cat sat on the mat"]
FIELDS = ("mask", "token_ids", "offsets", "tokenizer", "ids", "tasks")


class Pair:
    """One hidden state and head, as a materialised and as a fused `ModelOutputs`."""

    def __init__(self, base: ModelOutputs, d: int = 6, seed: int = 0, dtype=torch.float64):
        g = torch.Generator().manual_seed(seed)
        b, n = base.mask.shape
        v = base.logits.shape[-1]
        self.head = nn.Linear(d, v).to(dtype)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(v, d, generator=g, dtype=dtype))
            self.head.bias.copy_(torch.randn(v, generator=g, dtype=dtype) * 0.3)
        self.h = torch.randn(b, n, d, generator=g, dtype=dtype)
        self.base = base

    def outputs(self, fused: bool, num_tokens=None) -> tuple[ModelOutputs, Tensor]:
        h = self.h.clone().requires_grad_(True)
        kwargs = {f: getattr(self.base, f) for f in FIELDS}
        if fused:
            out = ModelOutputs(**kwargs, llm_hidden=h, head=self.head)
        else:
            out = ModelOutputs(**kwargs, logits=self.head(h))
        out.num_tokens = num_tokens
        return out, h


Tensor = torch.Tensor


def run(pair: Pair, loss: nn.Module, teacher, fused: bool, num_tokens=None):
    """(loss value, metrics, [grad h, grad W, grad b, *loss-parameter grads])."""
    for p in [*pair.head.parameters(), *loss.parameters()]:
        p.grad = None
    student, h = pair.outputs(fused, num_tokens)
    out = loss(student, teacher)
    out.loss.backward()
    grads = [h.grad, pair.head.weight.grad, pair.head.bias.grad]
    grads += [p.grad for p in loss.parameters()]
    return out.loss.detach(), out.metrics, [g.clone() for g in grads]


def assert_same(pair, loss, teacher, atol=1e-10, num_tokens=None):
    want, want_m, want_g = run(pair, loss, teacher, fused=False, num_tokens=num_tokens)
    got, got_m, got_g = run(pair, loss, teacher, fused=True, num_tokens=num_tokens)
    assert_close(got, want, atol=atol, rtol=0)
    for a, b in zip(got_g, want_g):
        assert_close(a, b, atol=atol, rtol=0)
    for key in ("kd", "ce", "alpha"):
        if key in want_m:
            assert float(got_m[key]) == pytest.approx(float(want_m[key]), abs=atol)
    return got_g


def same_tokenizer(seed=0, v=11, dtype=torch.float64):
    s, t = make_pair(b=3, n=5, v=v, seed=seed, lengths=[5, 3, 1], dtype=dtype)
    return Pair(s, seed=seed, dtype=dtype), t


def sparse(teacher: TeacherSignals, k: int) -> TeacherSignals:
    vals, idx = teacher.logits.topk(k, dim=-1)
    return TeacherSignals(
        mask=teacher.mask,
        token_ids=teacher.token_ids,
        offsets=teacher.offsets,
        tokenizer=teacher.tokenizer,
        topk_values=vals,
        topk_indices=idx,
        logsumexp=teacher.logits.logsumexp(-1),
        vocab_size=teacher.logits.shape[-1],
    )


# ------------------------------------------------------------------ the kernel
def test_linear_terms_equals_autograd_on_the_logits():
    """Two weighted terms, chunked: value and gradients equal plain autograd."""
    pair, _ = same_tokenizer(seed=3)
    w1 = torch.rand(3, 5, dtype=torch.float64)

    def fn(logits, y):
        lp = torch.log_softmax(logits, -1)
        return (-lp.gather(-1, y.unsqueeze(-1)).squeeze(-1), (lp.exp() * lp).sum(-1))

    h = pair.h.clone().requires_grad_(True)
    ref = fn(pair.head(h), pair.base.token_ids)
    want = (ref[0] * w1).sum() + (ref[1] * 0.25).sum()
    want_g = torch.autograd.grad(want, [h, pair.head.weight, pair.head.bias])
    h2 = pair.h.clone().requires_grad_(True)
    got, terms = linear_terms(fn, h2, pair.head, (pair.base.token_ids,), (w1, 0.25), chunk_size=2)
    got_g = torch.autograd.grad(got, [h2, pair.head.weight, pair.head.bias])
    assert_close(got, want, atol=1e-12, rtol=0)
    for a, b in zip(got_g, want_g):
        assert_close(a, b, atol=1e-12, rtol=0)
    assert_close(terms[0], ref[0].detach(), atol=1e-12, rtol=0)
    assert not terms[0].requires_grad


def test_upstream_gradient_scales_and_no_grad_gives_the_value():
    pair, _ = same_tokenizer(seed=4)

    def fn(logits, y):
        return (torch.logsumexp(logits, -1),)

    h = pair.h.clone().requires_grad_(True)
    loss, _ = linear_terms(fn, h, pair.head, (pair.base.token_ids,), (1.0,), chunk_size=3)
    (3.0 * loss).backward()
    h_ref = pair.h.clone().requires_grad_(True)
    (3.0 * torch.logsumexp(pair.head(h_ref), -1).sum()).backward()
    assert_close(h.grad, h_ref.grad, atol=1e-12, rtol=0)
    with torch.no_grad():
        again, _ = linear_terms(fn, h, pair.head, (pair.base.token_ids,), (1.0,), chunk_size=3)
    assert_close(again, loss.detach(), atol=1e-12, rtol=0)


def test_weights_with_a_gradient_are_refused():
    pair, _ = same_tokenizer()
    w = torch.ones(3, 5, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match="detached"):
        linear_terms(lambda x: (x.sum(-1),), pair.h, pair.head, (), (w,), chunk_size=2)


# ------------------------------------------------------------------ the losses
@pytest.mark.parametrize("chunk", [None, 2])
def test_ce(chunk):
    pair, t = same_tokenizer(seed=1)
    assert_same(pair, CE(chunk_size=chunk), t)
    assert_same(pair, CE(chunk_size=chunk), t, num_tokens=7.0)
    assert_same(pair, CE(chunk_size=chunk), t, num_tokens=torch.tensor(4.0, dtype=torch.float64))


@pytest.mark.parametrize("kind", DIVERGENCES)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_token_kl_same_tokenizer_dense(kind, temperature):
    pair, t = same_tokenizer(seed=2)
    loss = TokenKL(temperature=temperature, ce_weight=0.3, kd_weight=0.7, divergence=kind,
                   chunk_size=2)  # fmt: skip
    assert_same(pair, loss, t)


@pytest.mark.parametrize("mode", ["renorm", "tail"])
def test_token_kl_sparse_teacher(mode):
    pair, t = same_tokenizer(seed=5)
    assert_same(pair, TokenKL(topk_mode=mode, temperature=1.5, chunk_size=2), sparse(t, 4))


def cross(bpe, wordlevel, seed=1):
    student = wordlevel.outputs(ANSWERS, seed=seed)
    teacher = bpe.outputs(ANSWERS, seed=seed + 1, teacher=True)
    return Pair(student, seed=seed), teacher


@pytest.mark.parametrize("kind", ["forward", "reverse", "jsd"])
def test_token_kl_across_tokenizers_shared_vocab(bpe, wordlevel, kind):
    pair, teacher = cross(bpe, wordlevel)
    assert_same(pair, TokenKL(divergence=kind, chunk_size=3), teacher)
    assert_same(pair, TokenKL(divergence=kind, chunk_size=3), sparse(teacher, 16))


def test_token_kl_bridge_gets_the_same_gradient(bpe, wordlevel):
    pair, teacher = cross(bpe, wordlevel, seed=3)
    loss = TokenKL(
        cross_tokenizer="bridge",
        bridge_vocab=(bpe.info.vocab_size, wordlevel.info.vocab_size),
        bridge_rank=4,
        chunk_size=3,
    ).double()
    grads = assert_same(pair, loss, teacher)
    assert len(grads) == 3 + 3 and all(g.abs().sum() > 0 for g in grads[3:])


@pytest.mark.parametrize("mode", ["batch_ema", "per_token"])
def test_ddat_over_token_kl(mode):
    pair, t = same_tokenizer(seed=6)
    losses = [DDAT(TokenKL(temperature=2.0, ce_weight=0.0), mode=mode, center=1.0) for _ in "ab"]
    for loss, fused in zip(losses, (False, True)):
        loss.train()
        run(pair, loss, t, fused=fused)
    assert_close(losses[0].window, losses[1].window, atol=1e-12, rtol=0)
    for loss in losses:
        loss.on_step(1)
    assert_same(pair, losses[0], t)  # after the EMA started
    assert_close(losses[0].entropy_ema, losses[1].entropy_ema, atol=1e-12, rtol=0)


def test_fp32_agrees_to_1e5():
    pair, t = same_tokenizer(seed=7, v=151, dtype=torch.float32)
    assert_same(pair, TokenKL(temperature=2.0, chunk_size=2), t, atol=1e-5)


def test_losses_that_need_logits_say_so():
    pair, t = same_tokenizer(seed=8)
    student, _ = pair.outputs(fused=True)
    with pytest.raises(LossInputError, match="train.fused_head"):
        MultiLevelOT()(student, t)
    with pytest.raises(LossInputError, match="fused"):
        TokenKL().token_divergence(student, t)
    with pytest.raises(ValueError, match="llm_hidden"):
        ModelOutputs(mask=student.mask, token_ids=student.token_ids, head=pair.head)
    assert student.vocab_size == pair.head.out_features


class LowRankHead(nn.Linear):
    """A head that is not a plain nn.Linear (as a LoRA-wrapped lm_head): W x + B A x."""

    def __init__(self, linear: nn.Linear, rank: int = 2):
        super().__init__(linear.in_features, linear.out_features, dtype=linear.weight.dtype)
        g = torch.Generator().manual_seed(11)
        with torch.no_grad():
            self.weight.copy_(linear.weight)
            self.bias.copy_(linear.bias)
        d, v = linear.in_features, linear.out_features
        self.a = nn.Parameter(torch.randn(rank, d, generator=g, dtype=self.weight.dtype))
        self.b = nn.Parameter(torch.randn(v, rank, generator=g, dtype=self.weight.dtype))

    def forward(self, x):
        return super().forward(x) + (x @ self.a.t()) @ self.b.t()


def test_a_head_that_is_not_a_plain_linear_goes_through_autograd():
    pair, t = same_tokenizer(seed=9)
    pair.head = LowRankHead(pair.head)
    pair.head.weight.requires_grad_(False)  # LoRA: the base weight frozen
    loss = TokenKL(temperature=2.0, chunk_size=2)

    def grads(fused):
        for p in pair.head.parameters():
            p.grad = None
        student, h = pair.outputs(fused)
        loss(student, t).loss.backward()
        return [h.grad, pair.head.bias.grad, pair.head.a.grad, pair.head.b.grad]

    for a, b in zip(grads(True), grads(False)):
        assert_close(a, b, atol=1e-10, rtol=0)
    assert pair.head.weight.grad is None


def test_the_common_case_takes_the_closed_form(monkeypatch):
    """Forward KL over a dense same-vocabulary teacher uses `forward_kl_ce_grad` (no
    autograd in the chunk loop); the gradients are those of autograd (test above)."""
    import losses.token_kl as token_kl

    calls = []
    real = token_kl.forward_kl_ce_grad
    monkeypatch.setattr(
        token_kl, "forward_kl_ce_grad", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    pair, t = same_tokenizer(seed=10)
    assert_same(pair, TokenKL(temperature=2.0, chunk_size=2), t)
    assert len(calls) == 3  # n = 5 positions in chunks of 2
    calls.clear()
    assert_same(pair, TokenKL(divergence="reverse", chunk_size=2), t)
    assert not calls


def test_minus_inf_teacher_logits_and_padding_rows():
    """-inf is a legal teacher mask; an all -inf padding row must not reach the loss."""
    pair, t = same_tokenizer(seed=12)
    t.logits[0, 1, 3] = -float("inf")
    t.logits[2, 4, :] = -float("inf")  # item 2 has length 1: position 4 is padding
    got = assert_same(pair, TokenKL(temperature=1.0, chunk_size=2), t)
    assert all(torch.isfinite(g).all() for g in got)


@pytest.mark.parametrize("trained", ["weight", "bias", "neither"])
def test_staged_closed_form_with_part_of_the_head_frozen(trained):
    """The closed form keeps two chunks' gradients per head matmul (`STAGE`); with n = 5
    in chunks of 2 the last stage holds one chunk. A frozen weight or bias gets none."""
    from losses._fused_head import STAGE

    assert STAGE == 2
    pair, t = same_tokenizer(seed=14)
    pair.head.weight.requires_grad_(trained == "weight")
    pair.head.bias.requires_grad_(trained == "bias")
    loss = TokenKL(temperature=2.0, chunk_size=2)
    results = {}
    for fused in (False, True):
        for p in pair.head.parameters():
            p.grad = None
        student, h = pair.outputs(fused)
        out = loss(student, t)
        out.loss.backward()
        results[fused] = (out.loss.detach(), h.grad, pair.head.weight.grad, pair.head.bias.grad)
    a, b = results[True], results[False]
    assert_close(a[0], b[0], atol=1e-10, rtol=0)
    assert_close(a[1], b[1], atol=1e-10, rtol=0)
    for got, ref, name in ((a[2], b[2], "weight"), (a[3], b[3], "bias")):
        if name == trained:
            assert_close(got, ref, atol=1e-10, rtol=0)
        else:
            assert got is None and ref is None
