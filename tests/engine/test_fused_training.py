"""train.fused_head: the engine hands the loss hidden states and the head, not logits.

Three optimizer steps of the tiny DDAT recipe (DDAT over cross-tokenizer TokenKL) train the
same with and without it: the same logged losses and the same final weights, to 1e-5.
"""

import json

import pytest
from safetensors.torch import load_file

from distill.recipe import Recipe
from tests.engine.conftest import CONFIGS, tiny_overrides


def _log(run):
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


@pytest.mark.slow
def test_fused_head_trains_like_materialised_logits(make_recipe, tmp_path):
    common = {"optim.max_steps": 3, "train.save_every": 3, "train.eval_every": 0}
    for name, fused in (("plain", "false"), ("fused", "true")):
        make_recipe("ddat", out=name, **common, **{"train.fused_head": fused}).fit()
    logs = {k: _log(tmp_path / k) for k in ("plain", "fused")}
    assert [r["step"] for r in logs["fused"]] == [1, 2, 3]
    for a, b in zip(logs["plain"], logs["fused"]):
        for key in ("loss", "ce", "kd", "alpha"):
            assert b[key] == pytest.approx(a[key], abs=1e-5), (a["step"], key)
    w = {
        k: load_file(tmp_path / k / "checkpoints" / "step_000003" / "model.safetensors")
        for k in ("plain", "fused")
    }
    assert w["plain"].keys() == w["fused"].keys()
    worst = max(
        float((w["plain"][k].double() - w["fused"][k].double()).abs().max()) for k in w["plain"]
    )
    assert worst <= 1e-5, f"weights differ by {worst}"


def test_fused_head_with_a_loss_that_needs_logits_names_the_option(corpus, tmp_path):
    recipe = Recipe.from_yaml(
        CONFIGS / "multilevel_ot_tiny.yaml",
        overrides=tiny_overrides(
            corpus, tmp_path / "ot", **{"train.fused_head": "true", "optim.max_steps": 1}
        ),
    )
    with pytest.raises(Exception, match="train.fused_head"):
        recipe.fit()
