"""Every named demo arm builds into real loss modules with the widths it was given."""

import pytest
import torch

from distill._instantiate import instantiate
from distill.demo.arms import ARMS, BASELINE, BEST, STUDY_ARMS, arm


@pytest.mark.parametrize("name", ARMS)
def test_every_arm_builds_its_loss(name):
    a = arm(name, student_q=24, teacher_q=40, speech=(16, 32))
    loss = instantiate(a.loss, config_key="loss")
    assert isinstance(loss, torch.nn.Module)
    assert a.pseudo_labels == (name != BASELINE)
    # only the baseline and plain sequence-level KD (pseudo-labels, CE) need no live teacher
    assert a.teacher == (name not in (BASELINE, "seqkd"))
    # the feature terms' projections are sized from the widths passed in
    for module in loss.modules():
        if isinstance(module, torch.nn.Linear):
            assert {module.in_features, module.out_features} <= {16, 24, 32, 40}


def test_best_and_baseline_are_study_arms_and_unknown_names_are_refused():
    assert BASELINE in STUDY_ARMS and BEST in STUDY_ARMS and set(STUDY_ARMS) <= set(ARMS)
    with pytest.raises(ValueError, match="unknown arm 'nope'.*ce_only"):
        arm("nope", student_q=24, teacher_q=40, speech=(16, 32))
