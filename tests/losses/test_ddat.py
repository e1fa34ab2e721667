"""DDAT: the alpha formula, the EMA in buffers, per-token mode, invariants, gradients."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch.testing import assert_close

from distill.contracts import ModelOutputs, TeacherSignals
from losses import DDAT, MultiLevelOT, TokenKL
from losses.ddat import teacher_entropy

from .conftest import make_pair, pad_batch


def naive_entropy(t):
    hs = [
        float(-(t.logits[b, i].softmax(-1) * t.logits[b, i].log_softmax(-1)).sum())
        for b in range(t.mask.shape[0])
        for i in range(t.mask.shape[1])
        if t.mask[b, i]
    ]
    return sum(hs) / len(hs)


def test_uniform_teacher_hand_value():
    """Uniform teacher over v = 8: H = log 8 = 2.0794; alpha = 0.2 + sigmoid(log 8 - 2) * 0.2.
    Student equal to the teacher: KD = 0, so loss = (1 - alpha) * CE with CE = log 8."""
    mask, ids = torch.ones(1, 2, dtype=torch.bool), torch.zeros(1, 2, dtype=torch.long)
    logits = torch.zeros(1, 2, 8, dtype=torch.float64)
    s = ModelOutputs(mask=mask, token_ids=ids, logits=logits.clone().requires_grad_(True))
    t = TeacherSignals(mask=mask, token_ids=ids, logits=logits)
    out = DDAT(TokenKL(temperature=3.0))(s, t)
    alpha = 0.2 + 0.2 / (1 + math.exp(-(math.log(8) - 2.0)))
    assert out.metrics["alpha"] == pytest.approx(alpha, abs=1e-12)
    assert out.metrics["entropy"] == pytest.approx(math.log(8), abs=1e-12)
    assert out.metrics["loss"] == pytest.approx((1 - alpha) * math.log(8), abs=1e-12)


def test_matches_naive_mix_and_ema_buffers():
    s, t = make_pair(b=2, n=4, v=6, seed=1)
    kd = TokenKL(temperature=3.0)
    loss = DDAT(kd).double()
    out = loss(s, t)
    h = naive_entropy(t)
    alpha = 0.2 + 0.2 / (1 + math.exp(-(h - 2.0)))
    ce = TokenKL(kd_weight=0.0)(s, t).metrics["ce"]
    want = float((1 - alpha) * ce + alpha * kd.divergence(s, t).metrics["loss"])
    assert out.metrics["loss"] == pytest.approx(want, abs=1e-10)
    assert not bool(loss.started)  # the EMA moves once per optimizer step, in on_step
    loss.on_step(1)
    assert float(loss.entropy_ema) == pytest.approx(h, abs=1e-12)
    s2, t2 = make_pair(b=2, n=4, v=6, seed=2)
    assert loss(s2, t2).metrics["entropy"] == pytest.approx(h, abs=1e-12)
    loss.on_step(2)
    assert float(loss.entropy_ema) == pytest.approx(0.9 * h + 0.1 * naive_entropy(t2), abs=1e-12)
    restored = DDAT(TokenKL(temperature=3.0))
    restored.load_state_dict(loss.state_dict())
    assert float(restored.entropy_ema) == pytest.approx(float(loss.entropy_ema)) and bool(
        restored.started
    )


def test_eval_mode_does_not_move_the_ema():
    s, t = make_pair(seed=3)
    loss = DDAT(TokenKL()).eval()
    loss(s, t)
    loss.on_step(1)
    assert not bool(loss.started) and float(loss.entropy_ema) == 0.0


def test_wraps_multilevel_ot():
    s, t = make_pair(b=2, n=3, v=6, seed=4)
    ddat = DDAT(MultiLevelOT(topk=3))
    out = ddat(s, t)
    assert "kd/ot" in out.metrics
    # (1 - alpha) CE + alpha OT, alpha from the teacher's mean entropy (first batch: no EMA yet)
    alpha = ddat.base + (ddat.max - ddat.base) / (1 + math.exp(-(naive_entropy(t) - ddat.center)))
    ce = -sum(
        float(s.logits[b, i].double().log_softmax(-1)[s.token_ids[b, i]])
        for b in range(s.mask.shape[0])
        for i in range(s.mask.shape[1])
        if s.mask[b, i]
    ) / int(s.mask.sum())
    ot = float(MultiLevelOT(topk=3).divergence(s, t).loss)
    assert out.metrics["loss"] == pytest.approx((1 - alpha) * ce + alpha * ot, abs=1e-9)


def test_per_token_mode_matches_naive():
    s, t = make_pair(b=2, n=3, v=5, seed=5)
    kd = TokenKL(temperature=2.0)
    out = DDAT(kd, mode="per_token")(s, t)
    h = teacher_entropy(t)
    total, count = 0.0, 0
    kd_tok = kd.token_divergence(s, t)[0].detach()
    for b in range(2):
        for i in range(3):
            if s.mask[b, i]:
                a = 0.2 + 0.2 * float(h[b, i]) / math.log(5)
                ce = -float(s.logits[b, i].detach().log_softmax(-1)[s.token_ids[b, i]])
                total += (1 - a) * ce + a * float(kd_tok[b, i])
                count += 1
    assert out.metrics["loss"] == pytest.approx(total / count, abs=1e-10)


def test_per_token_needs_token_divergence():
    with pytest.raises(TypeError, match="token_divergence"):
        DDAT(MultiLevelOT(), mode="per_token")


def test_padding_and_all_masked():
    s, t = make_pair(b=2, n=4, v=5, seed=6)
    s2, t2 = pad_batch(s, t)
    assert_close(
        DDAT(TokenKL()).eval()(s2, t2).loss, DDAT(TokenKL()).eval()(s, t).loss, atol=1e-12, rtol=0
    )
    s.mask[:] = False
    t.mask[:] = False
    assert DDAT(TokenKL())(s, t).loss.item() == 0.0


def test_gradcheck_and_zero_grad_on_padding():
    s, t = make_pair(b=2, n=3, v=4, seed=7, lengths=[3, 1])
    loss = DDAT(TokenKL(chunk_size=2), mode="per_token")

    def f(x):
        return loss(ModelOutputs(mask=s.mask, token_ids=s.token_ids, logits=x), t).loss

    assert torch.autograd.gradcheck(f, (s.logits,))
    (g,) = torch.autograd.grad(f(s.logits), s.logits)
    assert g[1, 1:].abs().max().item() == 0.0


def _ddp_worker(rank: int, world: int, port: int, out: dict) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        s, t = make_pair(b=2, n=3, v=5, seed=20 + rank)
        loss = DDAT(TokenKL())
        loss(s, t)
        loss.on_step(1)
        out[rank] = (
            float(loss.entropy_ema),
            float(teacher_entropy(t)[t.mask].sum()),
            int(t.mask.sum()),
        )
    finally:
        dist.destroy_process_group()


def test_ema_is_all_reduced_across_processes():
    """Two gloo processes with different teachers end with the same EMA: the global token mean."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_ddp_worker, args=(2, port, out), nprocs=2, join=True)
    (ema0, h0, n0), (ema1, h1, n1) = out[0], out[1]
    assert ema0 == pytest.approx(ema1, abs=1e-12)
    assert ema0 == pytest.approx((h0 + h1) / (n0 + n1), abs=1e-12)


def test_all_masked_batch_leaves_the_ema_unchanged():
    """A batch without teacher tokens has no entropy: EMA and `started` stay as they were,
    and the next real batch moves the EMA to 0.9 h1 + 0.1 h2 as if it had never been."""
    loss = DDAT(TokenKL(temperature=3.0)).double()
    s, t = make_pair(b=2, n=4, v=6, seed=1)
    empty_s, empty_t = make_pair(b=2, n=4, v=6, seed=3)
    empty_s.mask[:] = False
    empty_t.mask[:] = False
    loss(empty_s, empty_t)  # before any real batch: still not started
    loss.on_step(1)
    assert not bool(loss.started) and float(loss.entropy_ema) == 0.0
    loss(s, t)
    loss.on_step(2)
    h1 = naive_entropy(t)
    assert float(loss.entropy_ema) == pytest.approx(h1, abs=1e-12)
    before = loss.entropy_ema.clone()
    out = loss(empty_s, empty_t)
    loss.on_step(3)
    assert torch.equal(loss.entropy_ema, before) and bool(loss.started)
    assert out.metrics["entropy"] == pytest.approx(h1, abs=1e-12)  # alpha uses the kept EMA
    s2, t2 = make_pair(b=2, n=4, v=6, seed=2)
    loss(s2, t2)
    loss.on_step(4)
    assert float(loss.entropy_ema) == pytest.approx(0.9 * h1 + 0.1 * naive_entropy(t2), abs=1e-12)


def test_ema_window_is_the_whole_accumulation_window():
    """Two micro-batches then one on_step equal one batch of both: the EMA takes the token
    mean over the window (not the mean of the two micro-batch means)."""
    s, t = make_pair(b=2, n=4, v=6, seed=7, lengths=[4, 1])

    def item(x, i):
        return replace(x, logits=x.logits[i : i + 1], mask=x.mask[i : i + 1],
                       token_ids=x.token_ids[i : i + 1])  # fmt: skip

    halves = [(item(s, i), item(t, i)) for i in range(2)]
    whole = DDAT(TokenKL()).double()
    whole(s, t)
    whole.on_step(1)
    accum = DDAT(TokenKL()).double()
    for hs, ht in halves:
        accum(hs, ht)
    accum.on_step(1)
    ent = teacher_entropy(t)
    want = float(ent[t.mask].sum() / t.mask.sum())
    assert float(accum.entropy_ema) == pytest.approx(want, abs=1e-12)
    assert float(whole.entropy_ema) == pytest.approx(want, abs=1e-12)
    means = [float(teacher_entropy(ht)[ht.mask].mean()) for _, ht in halves]
    assert abs(sum(means) / 2 - want) > 1e-3  # the two rules differ on this batch
