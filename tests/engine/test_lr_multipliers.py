"""optim.lr_multipliers: the longest prefix sets a parameter's lr; a prefix naming nothing
trainable is an error, not a silent no-op."""

import pytest
import torch
from torch import nn

from distill.engine.optim import param_groups


def _named():
    def p(*shape, trainable=True):
        return nn.Parameter(torch.zeros(*shape), requires_grad=trainable)

    return [
        ("student.speech_Qformer.layer.0.weight", p(4, 4)),
        ("student.speech_Qformer.layer.0.bias", p(4)),
        ("student.speech_llama_proj.weight", p(4, 4)),
        ("student.llama_model.lora_A.weight", p(2, 4)),
        ("student.llama_model.embed.weight", p(8, 4, trainable=False)),
        ("loss.contrastive.student_proj.weight", p(4, 4)),
    ]


def _lr_of(groups):
    return {id(q): (g["lr"], g["weight_decay"]) for g in groups for q in g["params"]}


def test_the_longest_prefix_sets_the_lr_and_decay_rules_still_hold():
    named = _named()
    groups = param_groups(named, lr=1e-3, weight_decay=0.01,
                          lr_multipliers={"student.": 0.5, "student.speech_Qformer": 3.0})  # fmt: skip
    lr = _lr_of(groups)
    by_name = {n: lr.get(id(p)) for n, p in named}
    assert by_name["student.speech_Qformer.layer.0.weight"] == pytest.approx((3e-3, 0.01))
    assert by_name["student.speech_Qformer.layer.0.bias"] == pytest.approx((3e-3, 0.0))
    assert by_name["student.speech_llama_proj.weight"] == pytest.approx((5e-4, 0.01))
    assert by_name["student.llama_model.lora_A.weight"] == pytest.approx((5e-4, 0.01))
    assert by_name["loss.contrastive.student_proj.weight"] == pytest.approx((1e-3, 0.01))
    assert by_name["student.llama_model.embed.weight"] is None  # frozen: in no group
    assert sum(len(g["params"]) for g in groups) == 5


@pytest.mark.parametrize(
    ("multipliers", "message"),
    [
        ({"speech_Qformer": 2.0}, "'speech_Qformer' names no parameter"),
        ({"student.llama_model.embed": 2.0}, "names only frozen parameters"),
        ({"student.speech": 2.0, "student.speech_": 3.0}, "'student.speech' is overridden"),
    ],
)
def test_a_prefix_that_changes_nothing_is_an_error(multipliers, message):
    with pytest.raises(ValueError, match=message) as err:
        param_groups(_named(), lr=1e-3, weight_decay=0.0, lr_multipliers=multipliers)
    assert "optim.lr_multipliers" in str(err.value)
    assert "student.speech_Qformer" in str(err.value)  # what the trainable names look like
