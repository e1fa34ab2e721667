"""A frozen `AudioLLM` as teacher: any model `distill` saved, built, or loaded."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from distill.contracts import AudioBatch, TeacherSignals

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def freeze(model: nn.Module) -> nn.Module:
    """No gradients, eval mode (dropout off). The engine never calls `train()` on it."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


class AudioLLMTeacher:
    """Wraps an AudioLLM; `signals(batch)` runs it under `torch.no_grad()`.

    Args:
        path: directory written by `AudioLLM.save_pretrained` (or by a recipe's `model/`).
        model: an already-built AudioLLM (alternative to `path`).
        dtype: the teacher's own dtype ("float32", "bfloat16", "float16").
        device: the teacher's own device; None = the training device (set by the engine).
        topk: keep only the top-k logits (sparse signals, what the cache stores); None = dense.
        hidden: hidden states to expose ("qformer", "speech", "audio", "llm_hidden");
            the engine adds those its losses need.
        logits: False skips the teacher's LLM and returns features only; the engine sets it
            False when no loss reads teacher logits (`needs_teacher_logits`).
    """

    live = True  # runs the model: can score any text (on-policy KD)

    def __init__(
        self,
        path: str | None = None,
        *,
        model: nn.Module | None = None,
        dtype: str = "float32",
        device: str | None = None,
        topk: int | None = None,
        hidden: Sequence[str] = (),
        logits: bool = True,
    ):
        if (path is None) == (model is None):
            raise ValueError("AudioLLMTeacher needs exactly one of `path` or `model`")
        if dtype not in _DTYPES:
            raise ValueError(f"AudioLLMTeacher dtype must be one of {list(_DTYPES)}, got {dtype!r}")
        if model is None:
            from distill.modeling.audio_llm import AudioLLM

            model = AudioLLM.from_pretrained(path)
        self.model = freeze(model.to(_DTYPES[dtype]))
        self.dtype = _DTYPES[dtype]
        self.device = torch.device(device) if device else None
        if self.device is not None:
            self.model.to(self.device)
        self.topk = topk
        self.hidden = tuple(hidden)
        self.logits = bool(logits)
        self.path = path

    def to_device(self, device: torch.device | str) -> None:
        """Called by the engine; an explicit `device` given at construction wins."""
        if self.device is None:
            self.model.to(device)
            self.device = torch.device(device)

    @property
    def tokenizer_info(self):
        return self.model.tokenizer_info

    @torch.no_grad()
    def signals(self, batch: AudioBatch) -> TeacherSignals:
        device = self.device or next(self.model.parameters()).device
        kw = {} if self.logits else {"logits": False}
        outputs = self.model(batch.to(device), hidden=self.hidden, **kw)
        signals = TeacherSignals.from_outputs(outputs, topk=self.topk)
        return _to(signals, batch.waveforms.device)


def _to(signals: TeacherSignals, device: torch.device) -> TeacherSignals:
    """Move every tensor field to the student's device (the teacher may live elsewhere)."""
    for name, value in vars(signals).items():
        if isinstance(value, torch.Tensor):
            setattr(signals, name, value.to(device))
    return signals
