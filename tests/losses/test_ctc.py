"""CTCAux: closed form, brute-force parity, invariants, gradients."""

import itertools
import math

import torch

from distill.contracts import ModelOutputs
from losses import CTCAux

V, D = 4, 3  # vocab (blank = 4), speech width


def _outputs(speech, token_ids, n_words, tasks, logits_v=V):
    b, n = token_ids.shape
    mask = torch.zeros(b, n, dtype=torch.bool)
    offsets = torch.zeros(b, n, 2, dtype=torch.long)
    for i, k in enumerate(n_words):
        mask[i, : k + 1] = True  # k words + end_sym
        for j in range(k):
            offsets[i, j] = torch.tensor([j, j + 1])
        offsets[i, k] = torch.tensor([k, k])  # end_sym: zero width
    return ModelOutputs(
        logits=torch.zeros(b, n, logits_v),
        mask=mask,
        token_ids=token_ids,
        offsets=offsets,
        speech=speech,
        tasks=tasks,
    )


def _naive_ctc(log_probs, target, blank):
    """-log sum over all frame labelings that collapse to `target` (brute force)."""
    t, c = log_probs.shape
    total = []
    for path in itertools.product(range(c), repeat=t):
        collapsed = [p for i, p in enumerate(path) if p != blank and (i == 0 or p != path[i - 1])]
        if collapsed == list(target):
            total.append(sum(log_probs[i, p] for i, p in enumerate(path)))
    return -torch.logsumexp(torch.stack(total), 0)


def test_closed_form_two_frames_one_token():
    loss_fn = CTCAux(D, V).double()
    g = torch.Generator().manual_seed(0)
    speech = torch.randn(1, 2, D, generator=g, dtype=torch.float64)
    out = _outputs(speech, torch.tensor([[2, 3]]), [1], ["asr"])
    p = torch.softmax(loss_fn.head(speech)[0], -1).detach()
    y, b = 2, V
    # paths: (y, y), (y, blank), (blank, y); denominator: 2 answer tokens (word + end_sym)
    expected = -math.log(p[0, y] * p[1, y] + p[0, y] * p[1, b] + p[0, b] * p[1, y]) / 2
    torch.testing.assert_close(loss_fn(out).loss.item(), expected)


def test_parity_with_brute_force():
    loss_fn = CTCAux(D, V).double()
    g = torch.Generator().manual_seed(1)
    speech = torch.randn(2, 4, D, generator=g, dtype=torch.float64)
    tokens = torch.tensor([[1, 1, 3], [0, 2, 3]])
    out = _outputs(speech, tokens, [2, 2], ["asr", "asr"])
    lp = torch.log_softmax(loss_fn.head(speech), -1)
    naive = sum(_naive_ctc(lp[i], tokens[i, :2].tolist(), V) for i in range(2)) / 6
    torch.testing.assert_close(loss_fn(out).loss, naive)


def test_only_asr_items_count_and_each_counts():
    loss_fn = CTCAux(D, V).double()
    g = torch.Generator().manual_seed(2)
    speech = torch.randn(2, 4, D, generator=g, dtype=torch.float64)
    tokens = torch.tensor([[1, 2, 3], [0, 2, 3]])
    base = loss_fn(_outputs(speech, tokens, [2, 2], ["asr", "audiocaption_v2"])).loss
    changed = speech.clone()
    changed[1] += 5.0  # the caption item: must not matter
    torch.testing.assert_close(
        loss_fn(_outputs(changed, tokens, [2, 2], ["asr", "audiocaption_v2"])).loss, base
    )
    changed = speech.clone()
    changed[0] += 1.0  # the ASR item: must matter, as the brute-force CTC of item 0 says
    moved = loss_fn(_outputs(changed, tokens, [2, 2], ["asr", "audiocaption_v2"])).loss
    for x, got in ((speech, base), (changed, moved)):
        lp = torch.log_softmax(loss_fn.head(x), -1)
        # only item 0 is ASR; the normaliser is every answer token of the batch (2 x 3)
        torch.testing.assert_close(got, _naive_ctc(lp[0], [1, 2], V) / 6)
    assert abs(float((moved - base).detach())) > 1e-3
    none = loss_fn(_outputs(speech, tokens, [2, 2], ["audiocaption_v2"] * 2)).loss
    assert none.item() == 0.0 and none.requires_grad
    # with no ASR item every parameter still gets a (zero) gradient: under DDP a parameter
    # left without one on one process puts the processes' all-reduces out of step
    loss_fn.zero_grad(set_to_none=True)
    none.backward()
    for name, p in loss_fn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() == 0, name


def test_gradcheck_and_global_normaliser():
    loss_fn = CTCAux(D, V).double()
    g = torch.Generator().manual_seed(3)
    speech = torch.randn(2, 3, D, generator=g, dtype=torch.float64, requires_grad=True)
    tokens = torch.tensor([[1, 3, 0], [2, 0, 3]])

    def f(x):
        return loss_fn(_outputs(x, tokens, [1, 2], ["asr", "asr"])).loss

    assert torch.autograd.gradcheck(f, (speech,))
    out = _outputs(speech.detach(), tokens, [1, 2], ["asr", "asr"])
    local = loss_fn(out).loss
    out.num_tokens = 10.0
    torch.testing.assert_close(loss_fn(out).loss, local * out.mask.sum() / 10.0)
    loss_fn(out).loss.backward()
    assert loss_fn.head.weight.grad is not None and loss_fn.head.weight.grad.abs().sum() > 0


def test_qformer_field_scores_real_windows_only():
    """field="qformer": CTC over each item's real windows equals F.ctc_loss on those windows."""
    loss_fn = CTCAux(D, V, field="qformer").double()
    assert loss_fn.hidden_states == ("qformer",)
    g = torch.Generator().manual_seed(3)
    windows = torch.randn(2, 5, D, generator=g, dtype=torch.float64)
    out = _outputs(None, torch.tensor([[1, 2, 3], [0, 3, 0]]), [2, 1], ["asr", "asr"])
    out.qformer = windows
    out.qformer_mask = torch.tensor([[True] * 3 + [False] * 2, [True] * 5])
    got = loss_fn(out).loss
    lp = torch.log_softmax(loss_fn.head(windows), -1)
    first = torch.nn.functional.ctc_loss(lp[0, :3, None], torch.tensor([[1, 2]]),
                                         torch.tensor([3]), torch.tensor([2]), blank=V,
                                         reduction="sum")  # fmt: skip
    second = torch.nn.functional.ctc_loss(lp[1, :, None], torch.tensor([[0]]), torch.tensor([5]),
                                          torch.tensor([1]), blank=V, reduction="sum")  # fmt: skip
    # denominator: 5 answer tokens (3 + 2, end_sym included)
    torch.testing.assert_close(got, (first + second) / 5)
    # padding windows do not matter
    out.qformer = torch.cat([windows[:1, :3], torch.randn(1, 2, D, dtype=torch.float64)], 1)
    out.qformer = torch.cat([out.qformer, windows[1:]], 0)
    torch.testing.assert_close(loss_fn(out).loss, got)


def test_unknown_field_is_refused():
    import pytest

    with pytest.raises(ValueError, match="field"):
        CTCAux(D, V, field="audio")
