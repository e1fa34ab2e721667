"""One `precision` setting for an AudioLLM, applied in one place (`apply_precision`).

    fp32      everything in float32
    bf16      everything in bfloat16
    fp16      everything in float16
    salmonn   as SALMONN runs: Whisper, BEATs/CED, the Q-Former, the projection and the layer
              norms in float32; the LLM (with its LoRA) in float16 on CUDA, bfloat16 on CPU
              (where float16 matmuls are slow or missing). The projected audio tokens are
              cast to the LLM's dtype where they are spliced into the prompt.

Whatever the precision, feature extraction (Whisper's log-mel, BEATs' fbank, CED's dB and its
BatchNorm statistics) computes in float32 from the float32 waveform; the encoders' inputs are
cast to their weights' dtype only after it.
"""

from __future__ import annotations

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16", "fp16", "salmonn")
_BY_NAME = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# AudioLLMConfig.dtype (the older, single-dtype setting) -> precision
FROM_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def llm_dtype(precision: str, device: torch.device | str | None = None) -> torch.dtype:
    """The LLM's dtype under `precision` (salmonn: fp16 on CUDA, bf16 elsewhere)."""
    if precision == "salmonn":
        on_cuda = device is not None and torch.device(device).type == "cuda"
        return torch.float16 if on_cuda else torch.bfloat16
    return _BY_NAME[precision]


def front_dtype(precision: str) -> torch.dtype:
    """The encoders', Q-Former's and projection's dtype under `precision`."""
    return torch.float32 if precision == "salmonn" else _BY_NAME[precision]


def apply_precision(model: nn.Module, precision: str, device=None) -> nn.Module:
    """Cast `model` (an AudioLLM) in place: its front ends and bridge, then its LLM."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    model.to(front_dtype(precision))
    model.llama_model.to(llm_dtype(precision, device))
    return model


__all__ = ["FROM_DTYPE", "PRECISIONS", "apply_precision", "front_dtype", "llm_dtype"]
