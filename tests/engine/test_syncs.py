"""The host-sync counter counts exactly the value-reading calls, and restores torch."""

import torch

from distill.engine.syncs import count_host_syncs


def test_counts_each_kind_and_restores_tensor():
    t = torch.tensor([1.5, 2.0])
    original = torch.Tensor.item
    with count_host_syncs() as c:
        float(t[0])
        t[1].item()
        int(t[1])
        if t[0] > 1:  # __bool__
            pass
        t.tolist()
        t.numpy()
        t.cpu()  # a CPU tensor: no copy, not counted
        _ = t * 2 + 1  # no sync
    assert dict(c.by_kind) == {"__float__": 1, "item": 1, "__int__": 1, "__bool__": 1,
                               "tolist": 1, "numpy": 1}  # fmt: skip
    assert c.total == 6
    assert torch.Tensor.item is original
    with count_host_syncs() as quiet:
        torch.ones(3).sum()
    assert quiet.total == 0


def test_the_optimizers_own_step_counters_are_not_counted():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()  # first step creates the state
    p.grad = torch.ones(3)
    with count_host_syncs() as c:
        opt.step()
    assert c.total == 0
