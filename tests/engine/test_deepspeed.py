"""DeepSpeed: claimed only as far as a test shows it.

Here DeepSpeed is not installed (it is not in distill's extras, and its CPU accelerator
needs Intel's oneCCL bindings), so the ZeRO-2 / ZeRO-3 equality test cannot run; the skip
says so. Where it is installed, distill still refuses DeepSpeed checkpoints (its engine
owns the optimizer state), and this test checks that refusal instead of skipping.
"""

import importlib.util

import pytest


def test_deepspeed_is_claimed_only_as_far_as_tested(make_recipe):
    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip(
            "deepspeed is not installed: ZeRO-2/ZeRO-3 against 1 process is untested, and "
            "the README says so"
        )
    from unittest import mock

    from accelerate.utils import DistributedType

    from distill.engine.trainer import Trainer

    trainer = Trainer(make_recipe("kl_ce", **{"optim.max_steps": 1}))
    with (
        mock.patch.object(type(trainer.accelerator), "distributed_type", DistributedType.DEEPSPEED),
        pytest.raises(NotImplementedError, match="DeepSpeed"),
    ):
        trainer._optimizer_state()
