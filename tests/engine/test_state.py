"""Checkpointed optimizer state is keyed by parameter name and restores exactly; the
teacher runs under inference mode; `train.teacher_placement` refuses what it cannot do."""

import pytest
import torch

from distill.engine import checkpoint as ckpt
from distill.engine.trainer import Trainer
from distill.modeling.checkpoint import CheckpointError, read_tensors


def _trained(make_recipe, out, steps=2, **extra):
    recipe = make_recipe("kl_ce", out=out, **{"optim.max_steps": steps, "train.save_every": steps,
                                              "train.eval_every": 0, **extra})  # fmt: skip
    recipe.fit()
    return recipe


def _state_by_name(trainer):
    opt = trainer._torch_optimizer
    names = {id(p): n for n, p in trainer.step_module.named_parameters()}
    return {names[id(p)]: s for p, s in opt.state.items()}


@pytest.mark.slow
def test_optimizer_state_is_named_and_resumes_exactly(make_recipe, tmp_path):
    recipe = _trained(make_recipe, "run")
    path = ckpt.latest_checkpoint(tmp_path / "run" / "checkpoints")
    saved = read_tensors(path / "optimizer.pt", what="optimizer state")  # weights_only
    trainable = {n for n, p in Trainer(recipe).step_module.named_parameters() if p.requires_grad}
    assert set(saved["state"]) == trainable
    assert {n for g in saved["param_groups"] for n in g["params"]} == trainable

    resumed = Trainer(recipe)
    resumed.maybe_resume()
    got = _state_by_name(resumed)
    assert set(got) == trainable
    for name, s in got.items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(s[key], saved["state"][name][key]), (name, key)

    # a checkpoint written before states were named (positional ids) still resumes
    positional = resumed.optimizer.state_dict()
    torch.save(positional, path / "optimizer.pt")
    legacy = Trainer(recipe)
    legacy.maybe_resume()
    for name, s in _state_by_name(legacy).items():
        assert torch.equal(s["exp_avg"], saved["state"][name]["exp_avg"]), name


@pytest.mark.slow
def test_an_optimizer_state_for_other_parameters_is_refused_by_name(make_recipe, tmp_path):
    recipe = _trained(make_recipe, "run")
    path = ckpt.latest_checkpoint(tmp_path / "run" / "checkpoints")
    state = read_tensors(path / "optimizer.pt", what="optimizer state")
    renamed = "student.not_a_parameter.weight"
    victim = sorted(state["state"])[0]
    state["state"][renamed] = state["state"].pop(victim)
    for g in state["param_groups"]:
        g["params"] = [renamed if n == victim else n for n in g["params"]]
    torch.save(state, path / "optimizer.pt")
    with pytest.raises(CheckpointError, match="not_a_parameter") as err:
        Trainer(recipe).maybe_resume()
    assert victim.split(".")[1] in str(err.value) and str(path) in str(err.value)


def test_the_teacher_runs_in_inference_mode_and_its_signals_train(make_recipe):
    trainer = Trainer(make_recipe("features", **{"optim.max_steps": 1}))
    modes = []
    signals_of = trainer.teacher.signals

    def spy(batch):
        modes.append(torch.is_inference_mode_enabled())
        return signals_of(batch)

    trainer.teacher.signals = spy
    batch = trainer.stream.next(0)
    signals = trainer._signals(batch)
    assert modes == [True]
    tensors = [v for v in vars(signals).values() if isinstance(v, torch.Tensor)]
    assert tensors and not any(t.is_inference() for t in tensors)
    loss, _ = trainer.step_module(batch, signals, None)
    loss.backward()  # feature MSE saves the teacher's hidden states for its backward


def test_teacher_placement_sharded_needs_fsdp(make_recipe):
    with pytest.raises(ValueError, match="teacher_placement: sharded needs FSDP"):
        Trainer(make_recipe("kl_ce", **{"train.teacher_placement": "sharded"}))


def test_teacher_placement_is_checked():
    from distill.recipe import TrainConfig

    with pytest.raises(Exception, match="teacher_placement must be 'replicated' or 'sharded'"):
        TrainConfig(teacher_placement="spread")
