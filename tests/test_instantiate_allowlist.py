"""The opt-in allow-list of `_component_` prefixes; without it every path builds."""

from __future__ import annotations

import sys

import pytest
import torch

from distill._instantiate import ALLOW_ENV, ConfigError, instantiate, is_allowed

LINEAR = {"_component_": "torch.nn.Linear", "in_features": 2, "out_features": 3}
NOT_IMPORTED = "xml.dom.minidom"  # a stdlib module no test imports before this file


def test_by_default_every_path_is_allowed(monkeypatch):
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    assert isinstance(instantiate(LINEAR), torch.nn.Linear)
    monkeypatch.setenv(ALLOW_ENV, " , ")  # empty entries: the same as unset
    assert isinstance(instantiate(LINEAR), torch.nn.Linear)


def test_the_environment_allow_list_refuses_naming_path_and_key(monkeypatch):
    monkeypatch.setenv(ALLOW_ENV, "distill., losses.")
    node = {"_component_": "losses.DDAT", "kd": {"_component_": "os.system", "command": "true"}}
    with pytest.raises(ConfigError) as err:
        instantiate(node, config_key="loss")
    assert str(err.value) == (
        "_component_ 'os.system' at config key 'loss.kd._component_' is not under an allowed "
        f"prefix (distill., losses.); extend {ALLOW_ENV} or allowed_prefixes to permit it"
    )
    monkeypatch.setenv(ALLOW_ENV, "distill.,losses.,torch.")
    assert isinstance(instantiate(LINEAR), torch.nn.Linear)


def test_the_argument_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv(ALLOW_ENV, "distill.")
    assert isinstance(instantiate(LINEAR, allowed_prefixes=["torch.nn"]), torch.nn.Linear)
    monkeypatch.delenv(ALLOW_ENV)
    with pytest.raises(ConfigError) as err:
        instantiate({"layers": [LINEAR]}, allowed_prefixes=["losses."])
    assert str(err.value) == (
        "_component_ 'torch.nn.Linear' at config key 'layers[0]._component_' is not under an "
        f"allowed prefix (losses.); extend {ALLOW_ENV} or allowed_prefixes to permit it"
    )


def test_a_refused_tree_imports_nothing():
    sys.modules.pop(NOT_IMPORTED, None)
    node = {"_component_": "torch.nn.Sequential", "x": {"_component_": f"{NOT_IMPORTED}.Text"}}
    with pytest.raises(ConfigError, match=NOT_IMPORTED):
        instantiate(node, allowed_prefixes=["torch."])
    assert NOT_IMPORTED not in sys.modules


def test_prefix_matching_respects_module_boundaries():
    assert is_allowed("torch.optim.AdamW", ["torch"]) and is_allowed(
        "torch.optim.AdamW", ["torch."]
    )
    assert is_allowed("losses:DDAT", ["losses."]) and is_allowed("losses", ["losses"])
    assert not is_allowed("torchvision.models.resnet18", ["torch"])
    assert not is_allowed("torchvision.models.resnet18", ["torch."])
    assert not is_allowed("os.system", [])
