"""Config values and overrides become their fields' declared types, or fail naming them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distill._coerce import coerce
from distill._instantiate import ConfigError
from distill.engine.optim import build_optimizer, param_groups
from distill.recipe import Recipe

CONFIG = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "baseline_tiny.yaml"


def _yaml_with(tmp_path: Path, old: str, new: str) -> Path:
    text = CONFIG.read_text()
    assert old in text
    path = tmp_path / "recipe.yaml"
    path.write_text(text.replace(old, new))
    return path


def test_yaml_lr_3e_4_is_a_float_the_optimizer_takes(tmp_path):
    path = _yaml_with(tmp_path, "lr: 3.0e-4", "lr: 3e-4")
    assert "lr: 3e-4" in path.read_text()  # PyYAML alone reads this as the string "3e-4"
    recipe = Recipe.from_yaml(path)
    assert type(recipe.optim.lr) is float and recipe.optim.lr == 3e-4
    weight = torch.nn.Parameter(torch.zeros(2, 2))
    groups = param_groups([("w", weight)], lr=recipe.optim.lr, weight_decay=0.0)
    opt = build_optimizer(groups, betas=recipe.optim.betas, eps=recipe.optim.eps)
    assert opt.param_groups[0]["lr"] == 3e-4


def test_overrides_are_coerced_to_the_declared_types():
    recipe = Recipe.from_yaml(
        CONFIG,
        overrides=[
            "optim.lr=3e-4",
            "optim.max_steps=1e3",
            "optim.betas=[0.9, 0.95]",
            "optim.mixed_precision=no",  # YAML would say False; the field is str
            "optim.clip_grad_norm=null",
            "train.progress=off",
            "name=2024",
            "data.test=null",
        ],
    )
    assert type(recipe.optim.lr) is float and recipe.optim.lr == 3e-4
    assert type(recipe.optim.max_steps) is int and recipe.optim.max_steps == 1000
    assert recipe.optim.betas == (0.9, 0.95) and recipe.optim.mixed_precision == "no"
    assert recipe.optim.clip_grad_norm is None and recipe.train.progress is False
    assert recipe.name == "2024" and recipe.data.test is None


def test_a_bad_yaml_value_names_the_file_the_field_and_the_value(tmp_path):
    path = _yaml_with(tmp_path, "lr: 3.0e-4", "lr: fast")
    with pytest.raises(ConfigError) as err:
        Recipe.from_yaml(path)
    assert str(err.value) == f"{path}: recipe.optim.lr must be float, got 'fast' (str)"


def test_a_bad_override_names_the_field_and_the_value():
    with pytest.raises(ConfigError) as err:
        Recipe.from_yaml(CONFIG, overrides=["optim.warmup_steps=2.5"])
    assert str(err.value) == f"{CONFIG}: recipe.optim.warmup_steps must be int, got 2.5 (float)"
    with pytest.raises(ConfigError) as err:
        Recipe.from_dict({"student": {"_component_": "x"}}, overrides=["optim.betas=[0.9]"])
    assert str(err.value) == "recipe.optim.betas must be tuple[float, float], got [0.9] (list)"


def test_a_bare_yes_no_in_a_str_field_says_to_quote_it(tmp_path):
    path = _yaml_with(tmp_path, "  max_steps: 8", "  max_steps: 8\n  mixed_precision: no")
    with pytest.raises(ConfigError) as err:
        Recipe.from_yaml(path)
    assert str(err.value) == (
        f"{path}: recipe.optim.mixed_precision must be str, got False (bool); "
        "YAML reads a bare yes/no/on/off/true/false as a bool, quote it"
    )


@pytest.mark.parametrize(
    ("value", "hint", "want"),
    [
        ("3e-4", float, 3e-4),
        (2, float, 2.0),
        ("1e3", int, 1000),
        (4.0, int, 4),
        ("Yes", bool, True),
        ("off", bool, False),
        (7, str, "7"),
        ("none", float | None, None),
        ("none", str | None, "none"),
        (None, int | None, None),
        (["0.5", 1], tuple[float, float], (0.5, 1.0)),
        (["1", "2", "3"], tuple[int, ...], (1, 2, 3)),
        ("a.json", list[str], ["a.json"]),
        ({"lora": "2e0"}, dict[str, float], {"lora": 2.0}),
    ],
)
def test_coerce_table(value, hint, want):
    got = coerce(value, hint, "f")
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize(
    ("value", "hint", "message"),
    [
        ("abc", float, "f must be float, got 'abc' (str)"),
        (True, int, "f must be int, got True (bool)"),
        (1, bool, "f must be bool, got 1 (int)"),
        (None, int, "f must be int, got None (NoneType)"),
        ([1, 2, 3], tuple[float, float], "f must be tuple[float, float], got [1, 2, 3] (list)"),
        ("x", dict[str, float], "f must be dict[str, float], got 'x' (str)"),
    ],
)
def test_coerce_refusals(value, hint, message):
    with pytest.raises(ConfigError) as err:
        coerce(value, hint, "f")
    assert str(err.value) == message
