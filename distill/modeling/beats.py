"""BEATs audio encoder (Chen et al., "BEATs: Audio Pre-Training with Acoustic Tokenizers", 2022).

Our own implementation of microsoft/unilm `beats/` (BEATs.py, backbone.py, modules.py). Parameter
names equal the released checkpoint keys, so `{"cfg", "model"}` files load with strict matching.

Glossary: b batch, s samples (16 kHz), m fbank frames (100/s), c mel bins (128), t tokens,
d width, h heads, e head width. A token is a 16x16 (frames x mels) fbank patch; tokens are
time-major (t = time patch * 8 + mel patch), so 30 s gives 187 * 8 = 1496 tokens.

Forward (as the original): Kaldi fbank of waveform * 2**15 (128 bins, 25/10 ms), normalised as
(x - 15.41663) / (2 * 6.55582); patch conv -> LayerNorm -> Linear 512->768; padded tokens zeroed;
+ GELU(weight-normed grouped conv, kernel 128); LayerNorm; 12 deep-norm post-LN layers whose
attention adds a T5-style bucketed relative position bias (computed once, shared weights),
scaled per query by a learned GRU-like gate.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
import torchaudio.compliance.kaldi as ta_kaldi
from einops import rearrange, repeat
from torch import Tensor, nn

from distill._instantiate import ConfigError
from distill.modeling._encoder_io import (
    CheckpointError,
    load_strict,
    read_state_file,
    typed_kwargs,
)

FBANK_MEAN = 15.41663
FBANK_STD = 6.55582
FRAME_LEN, FRAME_SHIFT, NUM_MELS = 400, 160, 128  # 25 ms / 10 ms at 16 kHz
_FBANK_KW = dict(num_mel_bins=NUM_MELS, sample_frequency=16000, frame_length=25, frame_shift=10)


@dataclass
class BEATsConfig:
    """The original `BEATsConfig` fields (same names, same defaults except input_patch_size)."""

    input_patch_size: int = 16  # original default -1 ("must be set"); every release uses 16
    embed_dim: int = 512  # patch embedding width, projected to encoder_embed_dim
    conv_bias: bool = False
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    layer_wise_gradient_decay_ratio: float = 1.0  # gradient scale applied before each layer
    layer_norm_first: bool = False  # pre-LN; exclusive with deep_norm
    deep_norm: bool = False  # post-LN with residual * (2 N)^(1/4)
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    encoder_layerdrop: float = 0.0
    dropout_input: float = 0.0
    conv_pos: int = 128  # kernel of the convolutional positional embedding
    conv_pos_groups: int = 16
    relative_position_embedding: bool = False
    num_buckets: int = 320
    max_distance: int = 1280
    gru_rel_pos: bool = False
    finetuned_model: bool = False  # adds the AudioSet `predictor` head
    predictor_dropout: float = 0.1
    predictor_class: int = 527
    extra: dict = field(default_factory=dict)  # unknown cfg keys, kept like the original does

    def __post_init__(self) -> None:
        if self.encoder_embed_dim % self.encoder_attention_heads:
            raise ConfigError(
                f"BEATs cfg: encoder_embed_dim {self.encoder_embed_dim} is not divisible by "
                f"encoder_attention_heads {self.encoder_attention_heads}"
            )
        if self.deep_norm and self.layer_norm_first:
            raise ConfigError("BEATs cfg: deep_norm and layer_norm_first cannot both be true")
        if self.activation_fn not in _ACTIVATIONS:
            raise ConfigError(
                f"BEATs cfg: activation_fn {self.activation_fn!r} not supported; use one of {sorted(_ACTIVATIONS)}"
            )
        if self.input_patch_size <= 0 or self.conv_pos <= 0:
            raise ConfigError("BEATs cfg: input_patch_size and conv_pos must be positive")

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> BEATsConfig:
        """Build from a checkpoint's cfg dict; unknown keys go to `extra`, wrong types raise."""
        kwargs = typed_kwargs(cls, dict(cfg), "BEATs cfg", unknown="keep")
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The flat cfg dict stored in `{"cfg", "model"}` checkpoints (extra keys included)."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "extra"}
        return {**self.extra, **out}


def _gelu_fp32(x: Tensor) -> Tensor:
    return F.gelu(x.float()).type_as(x)


_ACTIVATIONS = {"gelu": _gelu_fp32, "relu": F.relu, "tanh": torch.tanh, "linear": lambda x: x}


class WeightNormConv1d(nn.Module):
    """Grouped Conv1d with weight = g * v / ||v||, the norm over all axes but the kernel axis.

    Stores `weight_g` [1, 1, k] and `weight_v` [d, d / groups, k], the keys of torch's legacy
    `weight_norm(conv, dim=2)` that the released checkpoints use.
    """

    def __init__(self, channels: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.padding, self.groups = kernel // 2, groups
        std = math.sqrt(4.0 / (kernel * channels))
        v = torch.randn(channels, channels // groups, kernel) * std
        self.weight_g = nn.Parameter(v.norm(dim=(0, 1), keepdim=True))
        self.weight_v = nn.Parameter(v)
        self.bias = nn.Parameter(torch.zeros(channels))

    def weight(self) -> Tensor:
        return self.weight_v * (self.weight_g / self.weight_v.norm(dim=(0, 1), keepdim=True))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv1d(x, self.weight(), self.bias, padding=self.padding, groups=self.groups)


def relative_position_bucket(rel: Tensor, num_buckets: int, max_distance: int) -> Tensor:
    """Bidirectional T5 buckets: half per sign, exact below num_buckets/4, log-spaced above."""
    half = num_buckets // 2
    buckets = (rel > 0).long() * half
    dist = rel.abs()
    max_exact = half // 2
    log_ratio = torch.log(dist.clamp(min=1).float() / max_exact) / math.log(
        max_distance / max_exact
    )
    large = (max_exact + (log_ratio * (half - max_exact)).long()).clamp(max=half - 1)
    return buckets + torch.where(dist < max_exact, dist, large)


class BEATsSelfAttention(nn.Module):
    """Multi-head self-attention with the gated relative position bias (original module names)."""

    def __init__(self, cfg: BEATsConfig, has_bias_table: bool) -> None:
        super().__init__()
        d, h = cfg.encoder_embed_dim, cfg.encoder_attention_heads
        self.num_heads, self.p_drop, self.gru_rel_pos = h, cfg.attention_dropout, cfg.gru_rel_pos
        self.num_buckets, self.max_distance = cfg.num_buckets, cfg.max_distance
        if has_bias_table:
            self.relative_attention_bias = nn.Embedding(cfg.num_buckets, h)
        self.k_proj, self.v_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.q_proj, self.out_proj = nn.Linear(d, d), nn.Linear(d, d)
        if cfg.gru_rel_pos:
            self.grep_linear = nn.Linear(d // h, 8)
            self.grep_a = nn.Parameter(torch.ones(1, h, 1, 1))

    def compute_bias(self, t: int) -> Tensor:
        """Relative position bias [h, t, t] (query i, key j: bucket of j - i)."""
        pos = torch.arange(t, device=self.relative_attention_bias.weight.device)
        buckets = relative_position_bucket(
            pos[None, :] - pos[:, None], self.num_buckets, self.max_distance
        )
        return rearrange(self.relative_attention_bias(buckets), "i j h -> h i j")

    def forward(self, x: Tensor, bias: Tensor | None, key_pad: Tensor | None) -> Tensor:
        """x [b, t, d], bias [h, t, t] or None, key_pad [b, t] bool (True = ignore key)."""
        q, k, v = (
            rearrange(proj(x), "b t (h e) -> b h t e", h=self.num_heads)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        mask = None
        if bias is not None:
            if self.gru_rel_pos:  # per-query scale in (1, 2 * grep_a + 1) from the unscaled query
                gates = self.grep_linear(q).unflatten(-1, (2, 4)).sum(-1).sigmoid()  # [b, h, t, 2]
                scale = gates[..., :1] * (gates[..., 1:] * self.grep_a - 1.0) + 2.0
                mask = scale * bias
            else:
                mask = bias.unsqueeze(0)
        if key_pad is not None:
            neg = torch.zeros(key_pad.shape, dtype=q.dtype, device=q.device)
            neg = neg.masked_fill(key_pad, float("-inf"))[:, None, None, :]
            mask = neg if mask is None else mask + neg
        p = self.p_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=None if mask is None else mask.to(q.dtype), dropout_p=p
        )
        return self.out_proj(rearrange(out, "b h t e -> b t (h e)"))


class BEATsLayer(nn.Module):
    """One transformer layer: post-LN (deep norm) or pre-LN, as `layer_norm_first` says."""

    def __init__(self, cfg: BEATsConfig, has_bias_table: bool) -> None:
        super().__init__()
        d = cfg.encoder_embed_dim
        self.self_attn = BEATsSelfAttention(cfg, has_bias_table)
        self.self_attn_layer_norm, self.final_layer_norm = nn.LayerNorm(d), nn.LayerNorm(d)
        self.fc1, self.fc2 = (
            nn.Linear(d, cfg.encoder_ffn_embed_dim),
            nn.Linear(cfg.encoder_ffn_embed_dim, d),
        )
        self.act = _ACTIVATIONS[cfg.activation_fn]
        self.pre_ln, self.p, self.p_act = cfg.layer_norm_first, cfg.dropout, cfg.activation_dropout
        self.alpha = (2.0 * cfg.encoder_layers) ** 0.25 if cfg.deep_norm else 1.0

    def _ffn(self, x: Tensor) -> Tensor:
        x = F.dropout(self.act(self.fc1(x)), self.p_act, self.training)
        return F.dropout(self.fc2(x), self.p, self.training)

    def forward(self, x: Tensor, bias: Tensor | None, key_pad: Tensor | None) -> Tensor:
        if self.pre_ln:
            x = x + F.dropout(
                self.self_attn(self.self_attn_layer_norm(x), bias, key_pad), self.p, self.training
            )
            return x + self._ffn(self.final_layer_norm(x))
        attn = F.dropout(self.self_attn(x, bias, key_pad), self.p, self.training)
        x = self.self_attn_layer_norm(x * self.alpha + attn)
        return self.final_layer_norm(x * self.alpha + self._ffn(x))


class BEATsEncoder(nn.Module):
    """Conv positional embedding + transformer layers (the original `TransformerEncoder`)."""

    def __init__(self, cfg: BEATsConfig) -> None:
        super().__init__()
        d = cfg.encoder_embed_dim
        self.cfg = cfg
        self.pos_conv = nn.Sequential(WeightNormConv1d(d, cfg.conv_pos, cfg.conv_pos_groups))
        rel = cfg.relative_position_embedding
        self.layers = nn.ModuleList(
            BEATsLayer(cfg, rel and i == 0) for i in range(cfg.encoder_layers)
        )
        if rel:  # one bias table, registered under every layer like the original (so keys match)
            for layer in self.layers[1:]:
                layer.self_attn.relative_attention_bias = self.layers[
                    0
                ].self_attn.relative_attention_bias
        self.layer_norm = nn.LayerNorm(d)

    def forward(self, x: Tensor, pad: Tensor | None) -> Tensor:
        """x [b, t, d], pad [b, t] bool (True = padding) -> [b, t, d]."""
        cfg = self.cfg
        key_pad = None
        if pad is not None:
            x = x.masked_fill(pad[..., None], 0.0)
            key_pad = pad & ~pad.all(
                -1, keepdim=True
            )  # an all-padding item attends everywhere, no NaN
        conv = self.pos_conv[0](rearrange(x, "b t d -> b d t"))
        if cfg.conv_pos % 2 == 0:  # "same" padding for an even kernel drops the last output
            conv = conv[..., :-1]
        x = x + rearrange(F.gelu(conv), "b d t -> b t d")
        if not cfg.layer_norm_first:
            x = self.layer_norm(x)
        x = F.dropout(x, cfg.dropout, self.training)
        bias = (
            self.layers[0].self_attn.compute_bias(x.shape[1])
            if cfg.relative_position_embedding
            else None
        )
        r = cfg.layer_wise_gradient_decay_ratio
        for layer in self.layers:
            if (
                r != 1.0 and torch.is_grad_enabled()
            ):  # forward value unchanged, gradient scaled by r
                x = x * r + x.detach() * (1.0 - r)
            if (
                self.training
                and cfg.encoder_layerdrop > 0
                and torch.rand(()) < cfg.encoder_layerdrop
            ):
                continue
            x = layer(x, bias, key_pad)
        return self.layer_norm(x) if cfg.layer_norm_first else x


def num_fbank_frames(num_samples: Tensor | int) -> Tensor | int:
    """Kaldi frames (snip_edges): 1 + (s - 400) // 160, or 0 below one 400-sample window."""
    n = (num_samples - FRAME_LEN) // FRAME_SHIFT + 1
    return n.clamp(min=0) if isinstance(n, Tensor) else max(n, 0)


class BEATs(nn.Module):
    """The BEATs encoder with its fbank front end; `extract_features` is the SALMONN entry point.

    Args:
        cfg: architecture; parameter names follow the original so checkpoints load strictly.
    """

    @property
    def output_dim(self) -> int:
        """Width d of the features `extract_features` returns."""
        return self.cfg.encoder_embed_dim

    def __init__(self, cfg: BEATsConfig) -> None:
        super().__init__()
        self.cfg = cfg
        p = cfg.input_patch_size
        self.post_extract_proj = (
            nn.Linear(cfg.embed_dim, cfg.encoder_embed_dim)
            if cfg.embed_dim != cfg.encoder_embed_dim
            else None
        )
        self.patch_embedding = nn.Conv2d(
            1, cfg.embed_dim, kernel_size=p, stride=p, bias=cfg.conv_bias
        )
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.encoder = BEATsEncoder(cfg)
        self.layer_norm = nn.LayerNorm(cfg.embed_dim)
        if cfg.finetuned_model:
            self.predictor_dropout = nn.Dropout(cfg.predictor_dropout)
            self.predictor = nn.Linear(cfg.encoder_embed_dim, cfg.predictor_class)
        else:
            self.predictor = None
        self._init_weights()

    def _init_weights(self) -> None:
        """BERT-style normal(0.02) init, then deep-norm xavier gains (as the original)."""
        for m in self.encoder.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        if self.cfg.deep_norm:  # xavier gains 1 for q/k, beta for v/out/fc1/fc2
            beta = (8.0 * self.cfg.encoder_layers) ** -0.25
            for layer in self.encoder.layers:
                a = layer.self_attn
                for m in (a.k_proj, a.q_proj, a.v_proj, a.out_proj, layer.fc1, layer.fc2):
                    nn.init.xavier_normal_(
                        m.weight, gain=1.0 if m in (a.k_proj, a.q_proj) else beta
                    )

    @property
    def dim(self) -> int:
        return self.cfg.encoder_embed_dim

    def num_tokens(self, num_samples: int) -> int:
        """Tokens for a waveform of `num_samples`: (frames // p) * (128 // p); 1496 for 30 s."""
        p = self.cfg.input_patch_size
        return (num_fbank_frames(num_samples) // p) * (NUM_MELS // p)

    def preprocess(self, waveforms: Tensor) -> Tensor:
        """Normalised Kaldi fbank [b, m, 128] of waveforms [b, s] (computed in float32)."""
        if waveforms.shape[-1] < FRAME_LEN:
            raise ValueError(f"BEATs needs at least {FRAME_LEN} samples, got {waveforms.shape[-1]}")
        feats = [ta_kaldi.fbank(w.float()[None] * 2**15, **_FBANK_KW) for w in waveforms]
        return (torch.stack(feats) - FBANK_MEAN) / (2 * FBANK_STD)

    def token_padding_mask(
        self, padding_mask: Tensor, num_frames: int, *, mode: str = "exact"
    ) -> Tensor:
        """Token mask [b, t] (True = padding) from a right-padded sample mask [b, s].

        mode "exact": a token is padding unless all 16 fbank frames of its time patch lie
        wholly inside the valid samples, so padding a batch item leaves its valid tokens
        unchanged. mode "original": the unilm/SALMONN rule (samples grouped into frames, then
        frames into tokens by contiguous position, ignoring the (time, mel) token layout),
        which can mark a partial time patch and differs by up to one time patch.
        """
        p, n_freq = self.cfg.input_patch_size, NUM_MELS // self.cfg.input_patch_size
        n_time = num_frames // p
        if mode == "original":
            mask = padding_mask
            for n in (num_frames, n_time * n_freq):
                mask = (
                    mask[:, : mask.shape[1] - mask.shape[1] % n]
                    .reshape(mask.shape[0], n, -1)
                    .all(-1)
                )
            return mask
        if mode != "exact":
            raise ValueError(f"mask mode must be 'exact' or 'original', got {mode!r}")
        lengths = (~padding_mask).sum(-1)
        valid_time = num_fbank_frames(lengths) // p  # [b]
        pad_time = torch.arange(n_time, device=padding_mask.device)[None, :] >= valid_time[:, None]
        return repeat(pad_time, "b t -> b (t f)", f=n_freq)

    def extract_features(
        self, waveforms: Tensor, padding_mask: Tensor | None = None, *, mask_mode: str = "exact"
    ) -> tuple[Tensor, Tensor | None]:
        """Encoder features of raw audio (the predictor head is not applied).

        Args:
            waveforms: [b, s] float 16 kHz waveforms in [-1, 1], right-padded.
            padding_mask: [b, s] bool, True on padding samples; None = all valid.
            mask_mode: "exact" or "original", see `token_padding_mask`.

        Returns:
            features [b, t, d] time-major tokens, and the token mask [b, t] (True = padding),
            or None when `padding_mask` is None.
        """
        fbank = self.preprocess(waveforms).to(self.patch_embedding.weight.dtype)  # [b, m, c]
        x = rearrange(self.patch_embedding(fbank.unsqueeze(1)), "b e t f -> b (t f) e")
        x = self.layer_norm(x)
        pad = None
        if padding_mask is not None:
            pad = self.token_padding_mask(padding_mask.bool(), fbank.shape[1], mode=mask_mode)
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        x = self.encoder(self.dropout_input(x), pad)
        return x, pad


def save_beats(model: BEATs, path: str) -> None:
    """Write `{"cfg": dict, "model": state_dict}`, the released BEATs checkpoint layout."""
    torch.save({"cfg": model.cfg.to_dict(), "model": model.state_dict()}, path)


def load_beats(path: str, *, device: torch.device | str | None = None) -> BEATs:
    """Load a BEATs checkpoint `{"cfg": dict, "model": state_dict}` with strict key matching.

    Raises:
        CheckpointError: the file is not that layout, or its keys/shapes do not fit its cfg.
    """
    ckpt = read_state_file(path)
    if not isinstance(ckpt, Mapping) or not {"cfg", "model"} <= set(ckpt):
        got = sorted(ckpt)[:8] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise CheckpointError(
            f"{path} is not a BEATs checkpoint: expected a dict with 'cfg' and 'model', got {got}"
        )
    try:
        cfg = BEATsConfig.from_dict(ckpt["cfg"])
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err
    model = BEATs(cfg)
    load_strict(model, ckpt["model"], str(path), "BEATs")
    return model.to(device) if device is not None else model
