"""MultiLevelOT and the batched Sinkhorn: POT parity, closed forms, invariants, gradients."""

from __future__ import annotations

import ot
import pytest
import torch
from torch.testing import assert_close

from distill.contracts import ModelOutputs, TeacherSignals
from losses import LossInputError, MultiLevelOT
from losses.sinkhorn import l1_cost, sinkhorn

from .conftest import make_pair, pad_batch


@pytest.mark.parametrize("scale", [1.0, 200.0])  # 200: exp(-M / eps) underflows: logsumexp path
def test_sinkhorn_matches_pot_float64_with_padding(scale):
    g = torch.Generator().manual_seed(0)
    b, n, m, k = 4, 6, 5, 7
    x = torch.rand(b, n, k, generator=g, dtype=torch.float64).softmax(-1)
    y = torch.rand(b, m, k, generator=g, dtype=torch.float64).softmax(-1)
    rows, cols = [6, 3, 1, 4], [5, 4, 2, 1]
    row_mask = torch.arange(n) < torch.tensor(rows).unsqueeze(1)
    col_mask = torch.arange(m) < torch.tensor(cols).unsqueeze(1)
    cost = l1_cost(x, y) * scale
    ours, plan = sinkhorn(cost, row_mask, col_mask, eps=0.1, iters=10)
    for i in range(b):
        c = cost[i, : rows[i], : cols[i]]
        a = torch.full((rows[i],), 1.0 / rows[i], dtype=torch.float64)
        bb = torch.full((cols[i],), 1.0 / cols[i], dtype=torch.float64)
        ref = ot.sinkhorn2(
            a, bb, c, 0.1, method="sinkhorn_log", numItermax=10, stopThr=0.0, warn=False
        )
        ref_plan = ot.sinkhorn(
            a, bb, c, 0.1, method="sinkhorn_log", numItermax=10, stopThr=0.0, warn=False
        )
        assert abs(float(ours[i]) - float(ref)) <= 1e-5
        assert_close(plan[i, : rows[i], : cols[i]], ref_plan, atol=1e-8, rtol=0)
        assert plan[i, rows[i] :].sum().item() == 0.0 and plan[i, :, cols[i] :].sum().item() == 0.0


def test_sinkhorn_single_point_is_the_cost():
    """One row, one column: the only plan is P = 1, so the OT cost is M itself."""
    cost = torch.tensor([[[0.7]]], dtype=torch.float64)
    assert_close(sinkhorn(cost)[0], torch.tensor([0.7], dtype=torch.float64))


def naive_mlot(student, teacher, k=50, ce_weight=1.0, kd=1.5, w=(1.0, 0.1, 0.1)):
    """Straight from the definition, one sequence at a time, with POT for the OT term."""
    l1_sum, log_sum, count, ot_sum, items, ce_sum = 0.0, 0.0, 0, 0.0, 0, 0.0
    for b in range(student.mask.shape[0]):
        ns, nt = int(student.mask[b].sum()), int(teacher.mask[b].sum())

        def ranked(logits, n):
            z = logits[:n] / (logits[:n].std(-1, keepdim=True) + 1e-4)
            p = z.softmax(-1)
            ids = p.sum(0).argsort(descending=True)[:k]
            return p[:, ids]

        qs, qt = ranked(student.logits[b].detach(), ns), ranked(teacher.logits[b], nt)
        for i in range(min(ns, nt)):
            l1_sum += float((qs[i] - qt[i]).abs().sum())
            pt, ps = qt[i].softmax(-1), qs[i].softmax(-1)
            log_sum += float((pt * (pt.log() - ps.log())).sum())
            count += 1
        for i in range(ns):
            ce_sum -= float(student.logits[b, i].detach().log_softmax(-1)[student.token_ids[b, i]])
        if ns and nt:
            cost = (qs.unsqueeze(1) - qt.unsqueeze(0)).abs().sum(-1)
            a, bb = (
                torch.full((ns,), 1 / ns, dtype=cost.dtype),
                torch.full((nt,), 1 / nt, dtype=cost.dtype),
            )
            ot_sum += float(
                ot.sinkhorn2(a, bb, cost, 0.1, method="sinkhorn_log", numItermax=10, stopThr=0.0)
            )
            items += 1
    n_tok = int(student.mask.sum())
    kd_term = kd * (
        w[0] * l1_sum / max(count, 1)
        + w[1] * log_sum / max(count, 1)
        + w[2] * ot_sum / max(items, 1)
    )
    return ce_weight * ce_sum / max(n_tok, 1) + kd_term


def test_matches_naive_reference():
    s, t = make_pair(b=3, n=5, v=9, seed=1, lengths=[5, 3, 4])
    out = MultiLevelOT(topk=4, chunk_size=2)(s, t)
    assert out.metrics["loss"] == pytest.approx(naive_mlot(s, t, k=4), abs=1e-9)


def test_equal_single_token_sequences_give_zero_kd():
    """n = 1 per item: L1 = 0, LOG = 0 and the only plan has cost M = 0."""
    s, t = make_pair(b=2, n=1, v=6, seed=2, lengths=[1, 1])
    t = TeacherSignals(mask=t.mask, token_ids=t.token_ids, logits=s.logits.detach().clone())
    out = MultiLevelOT(topk=3, ce_weight=0.0)(s, t)
    assert out.metrics["loss"] == pytest.approx(0.0, abs=1e-12)


def test_hand_value_single_token_ot_equals_l1():
    """With one token per side the plan is 1, so OT = L1 and kd = 1.5 (L1 + 0.1 LOG + 0.1 L1)."""
    s, t = make_pair(b=1, n=1, v=6, seed=3, lengths=[1])
    out = MultiLevelOT(topk=3, ce_weight=0.0)(s, t)
    assert out.metrics["ot"] == pytest.approx(float(out.metrics["l1"]), abs=1e-12)
    want = 1.5 * (1.1 * float(out.metrics["l1"]) + 0.1 * float(out.metrics["log"]))
    assert out.metrics["loss"] == pytest.approx(want, abs=1e-12)


def test_padding_changes_nothing_and_all_masked_is_zero():
    s, t = make_pair(b=2, n=4, v=7, seed=4)
    s2, t2 = pad_batch(s, t)
    loss = MultiLevelOT(topk=3, chunk_size=3)
    assert_close(loss(s2, t2).loss, loss(s, t).loss, atol=1e-12, rtol=0)
    s.mask[:] = False
    t.mask[:] = False
    assert loss(s, t).loss.item() == 0.0


def test_every_item_counts_in_the_ot_term():
    s, t = make_pair(b=3, n=3, v=6, seed=5, lengths=[3, 3, 3])
    loss = MultiLevelOT(topk=4)
    base = loss(s, t).metrics["ot"]
    for b in range(3):
        t2 = TeacherSignals(mask=t.mask, token_ids=t.token_ids, logits=t.logits.clone())
        t2.logits[b] = (
            torch.randn(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(b)) * 3
        )
        out = loss(s, t2)
        assert abs(out.metrics["ot"] - base) > 1e-6
        # and it moves to the value the independent reference gives for the changed teacher
        assert out.metrics["loss"] == pytest.approx(naive_mlot(s, t2, k=4), abs=1e-9)
    assert loss(s, t).metrics["loss"] == pytest.approx(naive_mlot(s, t, k=4), abs=1e-9)


def test_gradcheck_and_zero_grad_on_padding():
    s, t = make_pair(b=2, n=3, v=5, seed=6, lengths=[3, 2])
    loss = MultiLevelOT(topk=3, chunk_size=2)

    def f(x):
        return loss(ModelOutputs(mask=s.mask, token_ids=s.token_ids, logits=x), t).loss

    assert torch.autograd.gradcheck(f, (s.logits,))
    (g,) = torch.autograd.grad(f(s.logits), s.logits)
    assert g[1, 2:].abs().max().item() == 0.0


def test_sparse_teacher_is_refused():
    s, t = make_pair()
    sparse = TeacherSignals.from_outputs(
        ModelOutputs(mask=t.mask, token_ids=t.token_ids, logits=t.logits), topk=2
    )
    with pytest.raises(LossInputError, match="dense"):
        MultiLevelOT()(s, sparse)


def naive_std_topk(x, mask, targets, k, temperature):
    """Steps 1-3 of the module docstring with plain autograd: (q [b, n, k], ce [b, n])."""
    z = x / ((x.std(-1, keepdim=True) + 1e-4) * temperature)
    p = z.softmax(-1)
    colsum = (p * mask.unsqueeze(-1).to(p.dtype)).sum(1)
    ids = colsum.topk(k, dim=-1).indices
    q = p.gather(-1, ids.unsqueeze(1).expand(-1, x.shape[1], -1))
    ce = -x.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return q, ce


@pytest.mark.parametrize("chunk, block_elems", [(None, 1 << 18), (2, 1 << 18), (4, 16), (1, 1)])
def test_fused_kernel_first_backward_matches_autograd(monkeypatch, chunk, block_elems):
    """The forward stores exp(a (x - max)) in the gradient buffer and the FIRST backward turns
    it into the gradient in place; that backward must equal autograd through the definition
    (gradcheck only sees later, recomputing backwards). Small block sizes force row blocks."""
    import losses._fused_ot as fused
    from losses.multilevel_ot import sorted_topk_probs

    monkeypatch.setattr(fused, "_BLOCK_ELEMS", block_elems)
    g = torch.Generator().manual_seed(3)
    b, n, v, k = 3, 5, 11, 4
    x = (torch.randn(b, n, v, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    y = torch.randint(0, v, (b, n), generator=g)
    g_q = torch.randn(b, n, k, generator=g, dtype=torch.float64)
    g_ce = torch.randn(b, n, generator=g, dtype=torch.float64)
    q, ce = sorted_topk_probs(x, mask, k, temperature=1.5, chunk_size=chunk, targets=y)
    (grad,) = torch.autograd.grad((q * g_q).sum() + (ce * g_ce).sum(), x)
    q_ref, ce_ref = naive_std_topk(x, mask, y, k, 1.5)
    (grad_ref,) = torch.autograd.grad((q_ref * g_q).sum() + (ce_ref * g_ce).sum(), x)
    assert_close(q, q_ref, rtol=0, atol=1e-12)
    assert_close(ce, ce_ref, rtol=0, atol=1e-12)
    assert_close(grad, grad_ref, rtol=0, atol=1e-12)


def test_fused_kernel_bf16_logits_stay_close_to_fp32():
    """Half-precision logits go through the fp32 block buffers (e is stored in bf16)."""
    from losses.multilevel_ot import sorted_topk_probs

    g = torch.Generator().manual_seed(4)
    x32 = torch.randn(2, 6, 40, generator=g) * 2
    x16 = x32.to(torch.bfloat16).requires_grad_(True)
    x32 = x16.detach().float().requires_grad_(True)
    mask = torch.ones(2, 6, dtype=torch.bool)
    y = torch.randint(0, 40, (2, 6), generator=g)
    grads = []
    for x in (x16, x32):
        q, ce = sorted_topk_probs(x, mask, 5, chunk_size=2, targets=y)
        grads.append(torch.autograd.grad(q.sum() * 3 + ce.sum(), x)[0])
    assert grads[0].dtype == torch.bfloat16
    assert_close(grads[0].float(), grads[1], rtol=0.02, atol=2e-3)
