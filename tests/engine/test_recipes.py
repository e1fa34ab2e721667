"""Every recipe trains a few steps: finite losses, trainable weights move, frozen ones don't."""

import json
import math

import pytest
import torch

from distill._instantiate import ConfigError
from distill.engine.trainer import Trainer
from distill.recipe import Recipe
from tests.engine.conftest import CONFIGS, RECIPES


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_trains(make_recipe, name):
    recipe = make_recipe(name, **{"optim.max_steps": 3, "train.save_every": 3})
    trainer = Trainer(recipe)
    student = trainer.student
    before = _snapshot(student)
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    frozen = {n for n, p in student.named_parameters() if not p.requires_grad}
    assert trainable and frozen
    summary = trainer.fit()
    assert summary["step"] == 3
    after = student.state_dict()
    moved = [n for n in trainable if not torch.equal(before[n], after[n])]
    assert len(moved) >= len(trainable) // 2, f"few trainable weights changed: {len(moved)}"
    assert all(torch.equal(before[n], after[n]) for n in frozen), "a frozen weight changed"
    log = [json.loads(line) for line in (trainer.out / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses and all(math.isfinite(x) for x in losses)
    assert (trainer.out / "checkpoints" / "step_000003" / "model.safetensors").is_file()
    assert (trainer.out / "model" / "config.json").is_file()


def test_loss_parameters_join_the_optimizer(make_recipe):
    trainer = Trainer(make_recipe("features", **{"optim.max_steps": 1}))
    loss_params = [p for p in trainer.loss.parameters() if p.requires_grad]
    assert loss_params, "the features recipe's losses own projections"
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in in_optimizer for p in loss_params)


def test_unknown_yaml_field_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((CONFIGS / "baseline_tiny.yaml").read_text() + "optim:\n  lrr: 1.0\n")
    with pytest.raises(ConfigError, match=r"optim\.lrr"):
        Recipe.from_yaml(bad)
    with pytest.raises(ConfigError, match=r"recipe\.colour"):
        Recipe.from_yaml(CONFIGS / "baseline_tiny.yaml", overrides=["colour=red"])


def test_yaml_round_trip_and_overrides(tmp_path):
    recipe = Recipe.from_yaml(
        CONFIGS / "ddat_tiny.yaml", overrides=["optim.lr=0.01", "data.batch_size=3"]
    )
    assert recipe.optim.lr == 0.01 and recipe.data.batch_size == 3
    path = tmp_path / "r.yaml"
    recipe.to_yaml(path)
    again = Recipe.from_yaml(path)
    assert again.to_dict() == recipe.to_dict()
    with pytest.raises(ConfigError, match="optim.lr must be > 0"):
        Recipe.from_yaml(CONFIGS / "ddat_tiny.yaml", overrides=["optim.lr=-1"])


@pytest.mark.parametrize("name", RECIPES)
def test_real_scale_configs_parse(name):
    recipe = Recipe.from_yaml(CONFIGS / f"{name}.yaml")
    assert recipe.student["_component_"]
