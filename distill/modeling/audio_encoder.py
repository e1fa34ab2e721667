"""Non-speech audio encoders (BEATs or CED) behind one small factory.

SALMONN keeps its second audio encoder in the attribute `beats`; we do the same for both
kinds. Each encoder maps raw 16 kHz waveforms to token features:

    features, token_mask = encoder.extract_features(waveforms, padding_mask)
    # waveforms [b, s] float, padding_mask [b, s] bool (True = padding) or None
    # features [b, t, d] time-major tokens, token_mask [b, t] bool (True = padding) or None

The checkpoint helpers here (strict key matching with errors that name keys and file) are
shared by `beats.py` and `ced.py`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from distill._instantiate import ConfigError

# CheckpointError is imported from here by beats.py, ced.py and callers; one class for both
from distill.modeling.checkpoint import CheckpointError, describe_keys, group_keys, read_tensors

KINDS = ("beats", "ced")

_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def typed_kwargs(cls: type, cfg: Mapping[str, Any], what: str, *, unknown: str = "raise") -> dict:
    """Check `cfg` against the annotated fields of dataclass `cls` (int/float/bool/str).

    Args:
        unknown: "raise" on keys `cls` lacks, or "keep" to return them under "extra".

    Raises:
        ConfigError: naming the field, the expected type and the value.
    """
    fields = {f.name: str(f.type) for f in dataclasses.fields(cls) if f.name != "extra"}
    out: dict[str, Any] = {"extra": {}} if unknown == "keep" else {}
    for key, value in cfg.items():
        if key not in fields:
            if unknown != "keep":
                raise ConfigError(f"{what}: unknown field {key!r}; known: {', '.join(fields)}")
            out["extra"][key] = value
            continue
        want = _TYPES[fields[key]]
        if not isinstance(value, want) or (bool not in want and isinstance(value, bool)):
            raise ConfigError(
                f"{what} field {key!r} must be {fields[key]}, got {value!r} ({type(value).__name__})"
            )
        out[key] = float(value) if fields[key] == "float" else value
    return out


def read_state_file(path: str | os.PathLike) -> Any:
    """Read a torch pickle (`weights_only=True`) or a safetensors file from `path`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    return read_tensors(path, what="audio encoder checkpoint")


def load_strict(module: nn.Module, state: Mapping[str, Tensor], path: str, what: str) -> None:
    """Load `state` into `module` with exact key and shape matching.

    Raises:
        CheckpointError: naming the missing, unexpected and mis-shaped keys and the file.
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = [
        f"{k} (file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)})"
        for k in sorted(set(expected) & set(state))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {describe_keys(group_keys(missing))}")
    if unexpected:
        problems.append(f"unexpected keys: {describe_keys(group_keys(unexpected))}")
    if mis_shaped:
        problems.append(f"shape mismatch: {'; '.join(mis_shaped)}")
    if problems:
        raise CheckpointError(
            f"{what} checkpoint {path} does not match the configured architecture: "
            + " | ".join(problems)
        )
    module.load_state_dict(dict(state), strict=True)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"unknown audio encoder kind {kind!r}; expected one of {KINDS}")


def build_audio_encoder(
    kind: str, config: Mapping[str, Any] | None = None, path: str | None = None
) -> nn.Module:
    """Build a BEATs or CED encoder.

    Args:
        kind: "beats" or "ced".
        config: architecture kwargs (original field names); random init when no `path`.
        path: checkpoint file; wins over `config` (BEATs files carry their own cfg, CED
            files are checked strictly against `config`, default CED-base when None).

    Returns:
        The encoder module, in eval mode, on CPU.
    """
    _check_kind(kind)
    if kind == "beats":
        from distill.modeling.beats import BEATs, BEATsConfig, load_beats

        model = load_beats(path) if path else BEATs(BEATsConfig.from_dict(dict(config or {})))
    else:
        from distill.modeling.ced import CED, CEDConfig, load_ced

        cfg = CEDConfig.from_dict(dict(config or {}))
        model = load_ced(path, cfg if config else None) if path else CED(cfg)
    return model.eval()


def audio_encoder_dim(kind: str, config: Mapping[str, Any] | None = None) -> int:
    """Feature width d of the encoder described by `config` (768 for the defaults)."""
    _check_kind(kind)
    if kind == "beats":
        from distill.modeling.beats import BEATsConfig

        return BEATsConfig.from_dict(dict(config or {})).encoder_embed_dim
    from distill.modeling.ced import CEDConfig

    return CEDConfig.from_dict(dict(config or {})).embed_dim


def tiny_audio_encoder_config(kind: str) -> dict:
    """A tiny config (a few hundred K params) that builds and runs fast on CPU, for tests."""
    _check_kind(kind)
    if kind == "beats":
        return {
            "input_patch_size": 16,
            "embed_dim": 48,
            "encoder_embed_dim": 96,
            "encoder_ffn_embed_dim": 192,
            "encoder_layers": 2,
            "encoder_attention_heads": 4,
            "deep_norm": True,
            "layer_norm_first": False,
            "conv_pos": 16,
            "conv_pos_groups": 4,
            "relative_position_embedding": True,
            "num_buckets": 32,
            "max_distance": 64,
            "gru_rel_pos": True,
            "dropout": 0.0,
            "attention_dropout": 0.0,
            "finetuned_model": False,
        }
    return {"embed_dim": 96, "depth": 2, "num_heads": 4, "outputdim": 8}
