"""Loading released SALMONN checkpoints into an `AudioLLM`.

A SALMONN `.pth` is a pickle of `{"model": state_dict_minus_frozen_params, "optimizer",
"config", "scaler", "epoch"}`. Whisper, BEATs and the LLM come from their own paths;
the checkpoint holds what SALMONN trained: `speech_query_tokens`, `ln_speech`,
`ln_audio`, the Q-Former, `speech_llama_proj` and the LoRA A/B matrices. Our module
names equal SALMONN's, so keys map by name.

Safety: the file is read with `torch.load(weights_only=True)`. A checkpoint whose
pickle needs arbitrary objects (weights_only=False) is refused, never unpickled.
Strictness: extra keys (the BLIP-2 text FFN, embeddings, `cls`, buffers such as
`position_ids`, optimizer leftovers) are ignored; every missing critical key, and every
shape mismatch, is listed in one error.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field

import torch
from torch import Tensor

from distill.modeling.checkpoint import CheckpointError, describe_keys, read_tensors
from distill.modeling.config import AudioLLMConfig, read_salmonn_model_block

logger = logging.getLogger(__name__)

_LAYER_PARTS = ("attention", "crossattention", "intermediate_query", "output_query")
_LORA = re.compile(r"\.lora_[AB]\.")


@dataclass
class SalmonnLoadReport:
    """What `load_salmonn_checkpoint` did."""

    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # checkpoint keys the model does not have
    not_in_checkpoint: list[str] = field(
        default_factory=list
    )  # non-critical model keys left as built


def critical_groups(model) -> dict[str, list[str]]:
    """Critical prefix -> the model's state-dict keys under it (what a SALMONN ckpt must hold)."""
    keys = list(model.state_dict().keys())
    groups: dict[str, list[str]] = {}

    def add(prefix: str, match) -> None:
        found = [k for k in keys if match(k)]
        if found:
            groups[prefix] = found

    for prefix in ("speech_query_tokens", "ln_speech.", "ln_audio.", "speech_llama_proj."):
        add(prefix.rstrip("."), lambda k, p=prefix: k == p or k.startswith(p))
    add(
        "speech_Qformer.bert.embeddings.LayerNorm",
        lambda k: k.startswith("speech_Qformer.bert.embeddings.LayerNorm."),
    )
    for i in range(model.config.qformer_layers):
        for part in _LAYER_PARTS:
            p = f"speech_Qformer.bert.encoder.layer.{i}.{part}."
            add(p.rstrip("."), lambda k, p=p: k.startswith(p))
    for k in keys:
        if _LORA.search(k):
            groups.setdefault(k.split(".lora_")[0] + ".lora", []).append(k)
    return groups


def salmonn_checkpoint_keys(config: AudioLLMConfig) -> dict[str, tuple[int, ...]]:
    """Keys and shapes a SALMONN checkpoint for `config` must hold (built on meta, no weights)."""
    from distill.modeling.audio_llm import AudioLLM

    model = AudioLLM(config, meta=True)
    state = model.state_dict()
    return {k: tuple(state[k].shape) for keys in critical_groups(model).values() for k in keys}


def read_salmonn_state(ckpt_path: str | os.PathLike) -> dict[str, Tensor]:
    """The `model` state dict of a SALMONN checkpoint (or a bare state dict / .safetensors)."""
    path = os.fspath(ckpt_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"SALMONN checkpoint not found: {path!r}")
    ckpt = read_tensors(path, what="SALMONN checkpoint")
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(
            f"{path!r} holds no state dict under 'model' (got {type(ckpt).__name__})"
        )
    return state


def normalize_salmonn_key(key: str) -> str:
    """SALMONN spellings -> ours: strip DDP's `module.`, add peft's `default` adapter name."""
    if key.startswith("module."):
        key = key[len("module.") :]
    return re.sub(r"\.lora_([AB])\.weight$", r".lora_\1.default.weight", key)


def load_salmonn_checkpoint(model, ckpt_path: str | os.PathLike) -> SalmonnLoadReport:
    """Load a SALMONN checkpoint into `model` by name.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: unsafe pickle, missing critical keys (all listed by prefix) or
            shape mismatches (all listed).
    """
    raw = read_salmonn_state(ckpt_path)
    state = {normalize_salmonn_key(k): v for k, v in raw.items()}
    own = model.state_dict()
    report = SalmonnLoadReport()
    report.ignored = sorted(k for k in state if k not in own)
    missing = {
        prefix: [k for k in keys if k not in state]
        for prefix, keys in critical_groups(model).items()
        if any(k not in state for k in keys)
    }
    shapes = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if missing or shapes:
        problems = []
        if missing:
            problems.append(f"missing critical prefixes ({len(missing)}): {describe_keys(missing)}")
        if shapes:
            problems.append(f"shape mismatches ({len(shapes)}): {'; '.join(shapes)}")
        raise CheckpointError(
            f"SALMONN checkpoint {os.fspath(ckpt_path)!r} does not fit AudioLLM "
            f"{model.config.name!r}: " + " | ".join(problems)
        )
    usable = {k: v for k, v in state.items() if k in own}
    with torch.no_grad():
        model.load_state_dict(usable, strict=False)
    report.loaded = sorted(usable)
    trainable = set(model.trainable_state_dict())
    report.not_in_checkpoint = sorted(trainable - set(usable))
    if report.not_in_checkpoint:
        logger.warning("SALMONN checkpoint lacks %d non-critical trainable keys, e.g. %s",
                       len(report.not_in_checkpoint), report.not_in_checkpoint[:3])  # fmt: skip
    logger.info("loaded %d SALMONN keys, ignored %d", len(report.loaded), len(report.ignored))
    return report


def salmonn_key(key: str) -> str:
    """Ours -> SALMONN's spelling (the inverse of `normalize_salmonn_key` for our keys):
    peft's named adapter `lora_A.default.weight` -> `lora_A.weight`."""
    return re.sub(r"\.lora_([AB])\.default\.weight$", r".lora_\1.weight", key)


def save_salmonn_checkpoint(model, path: str | os.PathLike) -> dict[str, Tensor]:
    """Write `{"model": trainable state}` as SALMONN saves it, with SALMONN's key names.

    Returns:
        The state dict written.
    """
    state = {
        salmonn_key(k): v.detach().cpu().clone() for k, v in model.trainable_state_dict().items()
    }
    torch.save({"model": state}, os.fspath(path))
    return state


def build_salmonn(
    config_yaml: str | os.PathLike | dict,
    *,
    ckpt: str | os.PathLike | None = None,
    device=None,
    meta: bool = False,
    **overrides,
):
    """Build an `AudioLLM` from a SALMONN YAML and load its `ckpt` (or the one given).

    Args:
        config_yaml: SALMONN config path or parsed dict (whole file or its `model:` block).
        ckpt: checkpoint path; defaults to the YAML's `model.ckpt` (none -> no load).
        device: move the model there after loading.
        meta: build on the meta device and skip loading (parameter counting).
        **overrides: `AudioLLMConfig` fields to change (e.g. dtype="float16").
    """
    from distill.modeling.audio_llm import AudioLLM

    block = read_salmonn_model_block(config_yaml)
    config = AudioLLMConfig.from_salmonn_yaml(block, **overrides)
    model = AudioLLM(config, meta=meta)
    ckpt = ckpt or block.get("ckpt") or None
    if ckpt and not meta:
        load_salmonn_checkpoint(model, ckpt)
    if device is not None and not meta:
        model.to(device)
    return model
