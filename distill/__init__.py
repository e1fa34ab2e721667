"""`distill`: knowledge distillation of SALMONN-style audio language models.

from distill import Recipe
recipe = Recipe.from_yaml("recipes/configs/ddat_tiny.yaml")
recipe.fit(); recipe.evaluate(); recipe.report()
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from distill.contracts import (
    AudioBatch,
    ContractError,
    DistillLoss,
    LossOutput,
    ModelOutputs,
    Teacher,
    TeacherSignals,
    TokenizerInfo,
)

__version__ = "0.1.0"

__all__ = [
    "AudioBatch",
    "ContractError",
    "DistillLoss",
    "LossOutput",
    "ModelOutputs",
    "Recipe",
    "Teacher",
    "TeacherSignals",
    "TokenizerInfo",
]

if TYPE_CHECKING:
    from distill.recipe import Recipe


def __getattr__(name: str):
    # Recipe pulls in accelerate and transformers; import it only when asked for.
    if name == "Recipe":
        from distill.recipe import Recipe

        return Recipe
    raise AttributeError(f"module 'distill' has no attribute {name!r}")
