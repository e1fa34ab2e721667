"""Fixtures for engine tests: one small synthetic corpus per session, tiny recipes."""

from pathlib import Path

import pytest

from distill.recipe import Recipe

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "recipes" / "configs"
RECIPES = ("baseline", "kl_ce", "multilevel_ot", "ddat", "features")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    from distill.data.synth import make_corpus

    out = tmp_path_factory.mktemp("corpus")
    return make_corpus(out, seed=0, n_speech=48, n_sounds=16)


def tiny_overrides(corpus, out_dir, **extra) -> list[str]:
    """Point a tiny recipe at the session corpus and a temp output dir."""
    items = {
        "data.synth": "null",
        "data.train": f"[{corpus['train']}]",
        "data.valid": corpus["valid"],
        "data.test": corpus["test"],
        "output_dir": str(out_dir),
        "train.progress": "false",
    }
    items.update({k: str(v) for k, v in extra.items()})
    return [f"{k}={v}" for k, v in items.items()]


@pytest.fixture
def make_recipe(corpus, tmp_path):
    def make(name: str, out: str = "run", **extra) -> Recipe:
        return Recipe.from_yaml(
            CONFIGS / f"{name}_tiny.yaml", overrides=tiny_overrides(corpus, tmp_path / out, **extra)
        )

    return make
