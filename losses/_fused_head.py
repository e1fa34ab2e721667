"""Hidden states -> logits -> loss, chunk by chunk: the [b, n, v] logits never exist.

Glossary: b batch, n answer tokens, d hidden width, v vocab, c chunk length.

A student run with `AudioLLM.forward(head=True)` hands losses its answer hidden states
h [b, n, d] and its output head (the `lm_head` module) instead of logits. The losses that
support it (CE, TokenKL in every direction and cross-tokenizer mode, DDAT over TokenKL)
are, per position, a weighted sum of terms whose weights do not depend on the student:

    loss = sum_j sum_{i} w_j[i] * term_j(head(h_i), ...)[i]

(w_j: the masks, 1 / num_tokens, ce/kd weights, DDAT's alpha: all detached). Because the
weights are known before the first chunk, `linear_terms` computes the gradient in the
forward pass, one chunk of positions at a time: logits = head(h_c), the terms, then
autograd on that chunk alone gives d loss / d h_c, d loss / d head parameters and d loss
/ d any loss parameter (a TokenKL bridge). Only [b, c, v] temporaries are alive, the head's
gradient accumulates in a [v, d] buffer, and the backward multiplies what was stored by
the upstream scalar. The head runs once per chunk, so the work is that of the
materialised path: one forward and the two backward matmuls of the head, no recompute
(Liger-Kernel's fused linear losses do the same on GPU with Triton kernels).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from losses._reduce import chunk_slices


def _params(modules: Sequence[object]) -> list[nn.Parameter]:
    seen, out = set(), []
    for m in modules:
        if isinstance(m, nn.Module):
            for p in m.parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
    return out


def _weigh(terms: Sequence[Tensor], weights: Sequence[Tensor | float | None], sl) -> Tensor:
    total = None
    for t, w in zip(terms, weights):
        if w is None:
            continue
        if isinstance(w, Tensor):
            w = w[:, sl] if w.dim() == 2 else w
            part = torch.where(w != 0, t * w, t.new_zeros(())).sum()  # padding: no NaN
        else:
            part = (t * w).sum()
        total = part if total is None else total + part
    return total if total is not None else terms[0].sum() * 0.0


def linear_terms(
    fn: Callable[..., tuple[Tensor, ...]],
    hidden: Tensor,
    head: nn.Module,
    sliced: Sequence[Tensor | None],
    weights: Sequence[Tensor | float | None],
    *,
    chunk_size: int | None,
    fixed: Sequence[object] = (),
    grad_fn: Callable[..., tuple[tuple[Tensor, ...], Tensor]] | None = None,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """sum_j sum_i weights[j][i] * fn(head(hidden), *sliced, *fixed)[j][i], chunked.

    Args:
        fn: per-position function of (logits [b, c, v], *sliced chunks, *fixed) returning
            a tuple of terms [b, c]; pure (it is differentiated chunk by chunk).
        hidden: [b, n, d] answer hidden states (row i predicts token i).
        head: the output head (`lm_head`, LoRA-wrapped or tied alike): logits = head(h).
        sliced: tensors with the positions on dim 1, sliced with the hidden states; they get
            no gradient (targets, masks, teacher rows).
        weights: one per term: a [b, n] tensor, a number, or None (term unused). Detached.
        chunk_size: positions per chunk (None: all at once).
        fixed: passed unchanged to `fn`; `nn.Module`s among them get gradients.
        grad_fn: optional closed form, (logits, weights sliced to the chunk, *sliced
            chunks, out=buffer) -> (terms, d loss / d logits), the gradient written into
            `out` ([b, c, v], the logits' upcast dtype); used for a plain `nn.Linear` head
            when no fixed module needs a gradient (fewer [b, c, v] temporaries than
            autograd, and `STAGE` chunks per head-gradient matmul).

    Returns:
        (loss, terms): the scalar weighted sum, differentiable with respect to `hidden`, the
        head's and the fixed modules' parameters; and each term [b, n], detached.
    """
    for w in weights:
        if isinstance(w, Tensor) and w.requires_grad:
            raise ValueError("linear_terms: weights must be detached (they get no gradient)")
    for x in sliced:
        if isinstance(x, Tensor) and x.requires_grad:
            raise ValueError("linear_terms: sliced inputs get no gradient; detach them first")
    params = _params([head, *fixed])
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or bool(params))
    spec = (fn, head, tuple(sliced), tuple(weights), chunk_size, tuple(fixed), grad_fn)
    if not needs_grad:
        with torch.no_grad():
            loss, terms, _ = _run(spec, hidden, params, want_grad=False)
        return loss, terms
    out = _LinearTerms.apply(spec, hidden, *params)
    return out[0], tuple(out[1:])


def _is_plain_linear(head: nn.Module) -> bool:
    return type(head) is nn.Linear


def _run(spec, hidden: Tensor, params: list[Tensor], want_grad: bool):
    """The chunk loop: loss, detached terms and (when want_grad) the gradients.

    A plain `nn.Linear` head (the usual `lm_head`) takes the direct route: autograd runs
    from the chunk's logits only, and the head's gradients are two matmuls written into
    their buffers in place (`addmm_`: no [v, d] temporary per chunk). Any other head
    (LoRA-wrapped, say) is differentiated through by autograd, chunk by chunk.
    """
    fn, head, sliced, weights, chunk_size, fixed, grad_fn = spec
    n = hidden.shape[1]
    slices = chunk_slices(n, chunk_size)
    loss, pieces = None, []
    g_hidden = torch.zeros_like(hidden) if want_grad and hidden.requires_grad else None
    # parameter gradients accumulate in at least fp32, as one matmul over all rows would
    g_params = [torch.zeros_like(p, dtype=torch.promote_types(p.dtype, torch.float32))
                for p in params] if want_grad else []  # fmt: skip
    direct = _is_plain_linear(head)
    head_params = [p for p in head.parameters() if p.requires_grad]
    if want_grad and direct and grad_fn is not None and len(params) == len(head_params):
        return _run_closed_form(spec, hidden, g_hidden, g_params, slices)
    w = head.weight.detach() if direct else None
    b = None if not direct or head.bias is None else head.bias.detach()
    for sl in slices:
        parts = [None if x is None else x[:, sl] for x in sliced]
        if not want_grad:
            terms = fn(head(hidden[:, sl].contiguous()), *parts, *fixed)
            total = _weigh(terms, weights, sl)
        elif direct:
            h = hidden[:, sl].detach()
            bc = h.shape[:2]
            # one [b * c, d] x [d, v] matmul: a strided [b, c, d] slice would go to bmm,
            # several times slower on CPU
            h2 = h.reshape(-1, h.shape[-1])
            rest = params[len(head_params) :]  # the fixed modules' parameters
            with torch.enable_grad():
                logits = nn.functional.linear(h2, w, b).view(*bc, -1).requires_grad_(True)
                terms = fn(logits, *parts, *fixed)
                total = _weigh(terms, weights, sl)
                grads = torch.autograd.grad(total, [logits, *rest], allow_unused=True)
            g2 = grads[0].to(w.dtype).reshape(-1, w.shape[0])  # [b * c, v]
            if g_hidden is not None:
                g_hidden[:, sl] = (g2 @ w).view(*bc, -1)
            acc = iter(g_params)
            if head.weight.requires_grad:
                gw = next(acc)
                gw.addmm_(g2.t().to(gw.dtype), h2.to(gw.dtype))
            if head.bias is not None and head.bias.requires_grad:
                gb = next(acc)
                gb.add_(g2.sum(0).to(gb.dtype))
            for a, gp in zip(acc, grads[1:]):
                if gp is not None:
                    a.add_(gp)
        else:
            with torch.enable_grad():
                h = hidden[:, sl].detach().contiguous().requires_grad_(g_hidden is not None)
                terms = fn(head(h), *parts, *fixed)
                total = _weigh(terms, weights, sl)
                inputs = ([h] if g_hidden is not None else []) + list(params)
                grads = torch.autograd.grad(total, inputs, allow_unused=True)
            if g_hidden is not None:
                g_hidden[:, sl] = grads[0]
                grads = grads[1:]
            for a, gp in zip(g_params, grads):
                if gp is not None:
                    a.add_(gp)
        total = total.detach()
        loss = total if loss is None else loss + total
        pieces.append([t.detach() for t in terms])
    terms = tuple(torch.cat([p[j] for p in pieces], dim=1) for j in range(len(pieces[0])))
    return loss, terms, (g_hidden, g_params)


# sub-chunks whose gradients are kept for one pair of head-gradient matmuls: twice the rows
# per pass over the [v, d] weight and its gradient (those passes, not the flops, dominate
# at a 151,936-token vocabulary), at no extra peak memory (see `_run_closed_form`)
STAGE = 2


def _run_closed_form(spec, hidden: Tensor, g_hidden, g_params, slices):
    """`_run`'s loop for a plain `nn.Linear` head with a closed-form `grad_fn`.

    The logits gradients of `STAGE` consecutive chunks are written into one staging buffer
    [STAGE * b * c, v] (the closed form writes its gradient there instead of into a buffer
    of its own), then d loss / d h and d loss / d W take one matmul each over all of them.
    Peak: the staging buffer plus the chunk's logits and one more [b, c, v] buffer, the
    four [b, c, v] buffers the unstaged loop held.
    """
    fn, head, sliced, weights, chunk_size, fixed, grad_fn = spec
    w = head.weight.detach()
    bias = None if head.bias is None else head.bias.detach()
    gw = next(iter(g_params)) if head.weight.requires_grad else None
    gb = g_params[-1] if head.bias is not None and head.bias.requires_grad else None
    b = hidden.shape[0]
    rows = b * max(sl.stop - sl.start for sl in slices)
    stage = None
    loss, pieces, pending = None, [], []

    def flush():
        used = sum(h.shape[0] for _, h in pending)
        g2 = stage[:used]
        if gw is not None or gb is not None or g_hidden is not None:
            h2 = torch.cat([h for _, h in pending]) if len(pending) > 1 else pending[0][1]
            if gw is not None:
                gw.addmm_(g2.t().to(gw.dtype), h2.to(gw.dtype))
            if gb is not None:
                gb.add_(g2.sum(0).to(gb.dtype))
            if g_hidden is not None:
                gh = g2.to(w.dtype) @ w
                start = 0
                for sl, h in pending:
                    r = h.shape[0]
                    g_hidden[:, sl] = gh[start : start + r].view(b, -1, gh.shape[-1])
                    start += r
        pending.clear()

    for sl in slices:
        parts = [None if x is None else x[:, sl] for x in sliced]
        h2 = hidden[:, sl].detach().reshape(-1, hidden.shape[-1])  # one [b * c, d] matmul
        logits = nn.functional.linear(h2, w, bias)
        if stage is None:
            dtype = torch.promote_types(logits.dtype, torch.float32)
            stage = logits.new_empty(STAGE * rows, logits.shape[-1], dtype=dtype)
        start = sum(h.shape[0] for _, h in pending)
        out = stage[start : start + h2.shape[0]].view(b, -1, logits.shape[-1])
        chunk_w = [x[:, sl] if isinstance(x, Tensor) and x.dim() == 2 else x for x in weights]
        terms, g = grad_fn(logits.view(b, -1, logits.shape[-1]), chunk_w, *parts, out=out)
        del logits
        if g.data_ptr() != out.data_ptr():  # a grad_fn that ignored `out`
            out.copy_(g)
        del g
        pending.append((sl, h2))
        total = _weigh(terms, weights, sl).detach()
        loss = total if loss is None else loss + total
        pieces.append([t.detach() for t in terms])
        if len(pending) == STAGE:
            flush()
    if pending:
        flush()
    terms = tuple(torch.cat([p[j] for p in pieces], dim=1) for j in range(len(pieces[0])))
    return loss, terms, (g_hidden, g_params)


class _LinearTerms(torch.autograd.Function):
    """Gradients computed in the forward (weights are known); backward scales them."""

    @staticmethod
    def forward(ctx, spec, hidden: Tensor, *params: Tensor):
        loss, terms, (g_hidden, g_params) = _run(spec, hidden, list(params), want_grad=True)
        ctx.g_hidden = g_hidden
        ctx.g_params = [g.to(p.dtype) for g, p in zip(g_params, params)]
        ctx.mark_non_differentiable(*terms)
        return (loss, *terms)

    @staticmethod
    def backward(ctx, g_loss: Tensor, *_unused):
        # in place: the stored gradients are ours, and a second [v, d] copy would cost
        # as much memory as the head's gradient itself (one backward per graph)
        g_hidden = (
            None if ctx.g_hidden is None else ctx.g_hidden.mul_(g_loss.to(ctx.g_hidden.dtype))
        )
        g_params = [g.mul_(g_loss.to(g.dtype)) for g in ctx.g_params]
        ctx.g_hidden, ctx.g_params = None, None
        return (None, g_hidden, *g_params)
