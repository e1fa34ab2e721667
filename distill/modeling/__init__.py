"""The SALMONN-style model family: Whisper [+ BEATs/CED] -> window Q-Former -> LLM.

Heavy imports (transformers, peft) happen on first use of the names below.
"""

from __future__ import annotations

import importlib
from typing import Any

from distill.modeling.config import AudioLLMConfig

_LAZY = {
    "AudioLLM": "distill.modeling.audio_llm",
    "CheckpointError": "distill.modeling.checkpoint",
    "load_weights": "distill.modeling.checkpoint",
    "WindowQFormer": "distill.modeling.qformer",
    "LogMel": "distill.modeling.whisper",
    "build_salmonn": "distill.modeling.salmonn",
    "load_salmonn_checkpoint": "distill.modeling.salmonn",
    "salmonn_checkpoint_keys": "distill.modeling.salmonn",
    "save_salmonn_checkpoint": "distill.modeling.salmonn",
    "tiny_config": "distill.modeling.tiny",
    "build_tiny": "distill.modeling.tiny",
    "train_tiny_tokenizer": "distill.modeling.tokenizers",
}

__all__ = ["AudioLLMConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'distill.modeling' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
