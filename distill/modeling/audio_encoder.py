"""Non-speech audio encoders (BEATs or CED) behind one small factory.

SALMONN keeps its second audio encoder in the attribute `beats`; we do the same for both
kinds. Each encoder maps raw 16 kHz waveforms to token features:

    features, token_mask = encoder.extract_features(waveforms, padding_mask)
    # waveforms [b, s] float, padding_mask [b, s] bool (True = padding) or None
    # features [b, t, d] time-major tokens, token_mask [b, t] bool (True = padding) or None

The checkpoint helpers (strict key matching with errors that name keys and file) live in
`_encoder_io.py`, shared by `beats.py` and `ced.py`, and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from distill._instantiate import ConfigError
from distill.modeling._encoder_io import (  # noqa: F401  (re-exported)
    CheckpointError,
    load_strict,
    read_state_file,
    typed_kwargs,
)
from distill.modeling.beats import BEATs, BEATsConfig, load_beats
from distill.modeling.ced import CED, CEDConfig, load_ced

KINDS = ("beats", "ced")


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
        model = load_beats(path) if path else BEATs(BEATsConfig.from_dict(dict(config or {})))
    else:
        cfg = CEDConfig.from_dict(dict(config or {}))
        model = load_ced(path, cfg if config else None) if path else CED(cfg)
    return model.eval()


def audio_encoder_dim(kind: str, config: Mapping[str, Any] | None = None) -> int:
    """Feature width d of the encoder described by `config` (768 for the defaults)."""
    _check_kind(kind)
    if kind == "beats":
        return BEATsConfig.from_dict(dict(config or {})).encoder_embed_dim
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
