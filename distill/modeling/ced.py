"""CED audio encoder (Dinkel et al., "CED: Consistent Ensemble Distillation for Audio Tagging", 2023).

Our own implementation of RicherMans/CED `models/audiotransformer.py` (`AudioTransformer`), whose
module names the original checkpoints use; the HF port (mispeech/ced-*, `modeling_ced.py`) prefixes
`encoder.`, renames `init_bn.1` to `init_bn` and drops the front-end buffers. `load_ced` takes both.

Glossary: b batch, s samples (16 kHz), c mel bins (64), m frames (100/s), n chunks of 1012 frames,
f frequency patches (4), t time patches (<= 63 per chunk), d width, h heads.

Forward: MelSpectrogram (n_fft = win = 512, hop 160, centred, 64 HTK mels, 0-8 kHz, power 2)
-> dB with a floor at max - 120 dB -> BatchNorm over mels -> chunks of 1012 frames (the last
zero-padded) -> 16x16 patch conv -> + time and frequency position embeddings -> 12 pre-LN ViT
blocks -> LayerNorm. The original flattens patches frequency-major `(f t)`; we return tokens
time-major `(n t f)` so they line up with time like Whisper and BEATs features.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
import torchaudio
from einops import rearrange
from torch import Tensor, nn

from distill._instantiate import ConfigError
from distill.modeling._encoder_io import (
    CheckpointError,
    load_strict,
    read_state_file,
    typed_kwargs,
)

SIZES = {"tiny": (192, 3), "mini": (256, 4), "small": (384, 6), "base": (768, 12)}


@dataclass
class CEDConfig:
    """Architecture and front end of an `AudioTransformer` (original kwarg names and defaults)."""

    embed_dim: int = 768  # 192 / 256 / 384 / 768 for tiny / mini / small / base
    depth: int = 12
    num_heads: int = 12  # 3 / 4 / 6 / 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    patch_stride: int = 16
    qkv_bias: bool = True
    outputdim: int = 527  # AudioSet classes of the `outputlayer` head (kept so checkpoints load)
    target_length: int = 1012  # frames per chunk; the time position table has target_length // 16
    n_mels: int = 64
    n_fft: int = 512
    win_size: int = 512
    hop_size: int = 160
    f_min: int = 0
    f_max: int = 8000
    center: bool = True
    pad_last: bool = True  # zero-pad the last chunk (else drop it)
    # one clip without padding runs as the original does: attention also sees the zero-padded
    # tail of its last chunk, and every token is returned. False masks it as in a batch
    single_clip_as_original: bool = True
    top_db: float = 120.0
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ConfigError(
                f"CED: embed_dim {self.embed_dim} not divisible by num_heads {self.num_heads}"
            )
        if self.patch_size != self.patch_stride:
            raise ConfigError(
                "CED: only non-overlapping patches (patch_size == patch_stride) are supported"
            )
        if self.n_mels % self.patch_size or self.target_length < self.patch_size:
            raise ConfigError(
                "CED: n_mels must be a multiple of patch_size and target_length >= patch_size"
            )

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> CEDConfig:
        """From kwargs; `name` ("ced-small", "small", ...) sets width and heads; unknown keys raise."""
        cfg = dict(cfg)
        name = cfg.pop("name", None)
        if name is not None:
            size = (
                str(name)
                .lower()
                .removeprefix("mispeech/")
                .removeprefix("ced-")
                .removeprefix("ced_")
            )
            if size not in SIZES:
                raise ConfigError(
                    f"CED: unknown size name {name!r}; expected one of {sorted(SIZES)}"
                )
            cfg.setdefault("embed_dim", SIZES[size][0])
            cfg.setdefault("num_heads", SIZES[size][1])
        return cls(**typed_kwargs(cls, cfg, "CED config"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class CEDAttention(nn.Module):
    def __init__(self, dim: int, heads: int, qkv_bias: bool, attn_drop: float, drop: float) -> None:
        super().__init__()
        self.num_heads, self.attn_drop, self.drop = heads, attn_drop, drop
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, key_pad: Tensor | None) -> Tensor:
        """x [b, t, d], key_pad [b, t] bool (True = ignore this key) or None."""
        q, k, v = rearrange(self.qkv(x), "b t (k h e) -> k b h t e", k=3, h=self.num_heads)
        mask = None if key_pad is None else ~key_pad[:, None, None, :]
        p = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return F.dropout(
            self.proj(rearrange(out, "b h t e -> b t (h e)")), self.drop, self.training
        )


class CEDMlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float) -> None:
        super().__init__()
        self.fc1, self.fc2, self.drop = nn.Linear(dim, hidden), nn.Linear(hidden, dim), drop

    def forward(self, x: Tensor) -> Tensor:
        x = F.dropout(F.gelu(self.fc1(x)), self.drop, self.training)
        return F.dropout(self.fc2(x), self.drop, self.training)


class CEDBlock(nn.Module):
    """Pre-LN ViT block: x + attn(norm1(x)), then x + mlp(norm2(x)); LayerNorm eps 1e-6."""

    def __init__(self, cfg: CEDConfig) -> None:
        super().__init__()
        d = cfg.embed_dim
        self.norm1 = nn.LayerNorm(d, eps=1e-6)
        self.attn = CEDAttention(d, cfg.num_heads, cfg.qkv_bias, cfg.attn_drop_rate, cfg.drop_rate)
        self.norm2 = nn.LayerNorm(d, eps=1e-6)
        self.mlp = CEDMlp(d, int(d * cfg.mlp_ratio), cfg.drop_rate)

    def forward(self, x: Tensor, key_pad: Tensor | None) -> Tensor:
        x = x + self.attn(self.norm1(x), key_pad)
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, cfg: CEDConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_stride)


def freq_to_time_major(x: Tensor, n_freq: int) -> Tensor:
    """Reorder tokens [b, (f t), d] (the original CED order) to [b, (t f), d]."""
    return rearrange(x, "b (f t) d -> b (t f) d", f=n_freq)


class CED(nn.Module):
    """CED encoder with its mel front end; `extract_features` gives time-major tokens.

    Args:
        cfg: architecture; module names follow the original `AudioTransformer`.
    """

    @property
    def output_dim(self) -> int:
        """Width d of the features `extract_features` returns."""
        return self.cfg.embed_dim

    def __init__(self, cfg: CEDConfig) -> None:
        super().__init__()
        self.cfg = cfg
        with torch.device("cpu"):  # the filterbank is computed eagerly (fails on `meta`)
            mel = torchaudio.transforms.MelSpectrogram(
                sample_rate=16000,
                n_fft=cfg.n_fft,
                win_length=cfg.win_size,
                hop_length=cfg.hop_size,
                f_min=cfg.f_min,
                f_max=cfg.f_max,
                n_mels=cfg.n_mels,
                center=cfg.center,
            )
        self.front_end = nn.Sequential(mel)  # keys front_end.0.{spectrogram.window, mel_scale.fb}
        # index 1 as in the original nn.Sequential(Rearrange, BatchNorm2d, Rearrange)
        self.init_bn = nn.Sequential(
            nn.Identity(), nn.BatchNorm2d(cfg.n_mels, momentum=0.01), nn.Identity()
        )
        self.patch_embed = _PatchEmbed(cfg)
        d, p = cfg.embed_dim, cfg.patch_stride
        self.time_pos_embed = nn.Parameter(torch.randn(1, d, 1, cfg.target_length // p) * 0.02)
        self.freq_pos_embed = nn.Parameter(torch.randn(1, d, cfg.n_mels // p, 1) * 0.02)
        self.blocks = nn.ModuleList(CEDBlock(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.outputlayer = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, cfg.outputdim))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    @property
    def dim(self) -> int:
        return self.cfg.embed_dim

    @property
    def n_freq(self) -> int:
        return self.cfg.n_mels // self.cfg.patch_stride

    def num_frames(self, num_samples: Tensor | int) -> Tensor | int:
        c = self.cfg
        return (
            1 + num_samples // c.hop_size if c.center else 1 + (num_samples - c.n_fft) // c.hop_size
        )

    def _chunk_layout(self, frames: int) -> tuple[int, int]:
        """(chunks, frames per chunk) for a spectrogram of `frames` frames."""
        target = self.cfg.target_length
        if frames <= target:
            return 1, frames
        return (-(-frames // target) if self.cfg.pad_last else frames // target), target

    def num_tokens(self, num_samples: int) -> int:
        """Tokens for `num_samples`: chunks * (chunk frames // 16) * 4; 756 for 30 s."""
        n, length = self._chunk_layout(self.num_frames(num_samples))
        return n * (length // self.cfg.patch_stride) * self.n_freq

    def spectrogram(self, waveforms: Tensor) -> Tensor:
        """Log-mel [b, c, m] in dB, floored at each item's max - top_db (float32)."""
        c, mel = self.cfg, self.front_end[0]
        with torch.autocast(waveforms.device.type, enabled=False):  # fp32 even in a bf16 model
            stft = torch.stft(
                waveforms.float(),
                c.n_fft,
                hop_length=c.hop_size,
                win_length=c.win_size,
                window=mel.spectrogram.window.float(),
                center=c.center,
                pad_mode="reflect",
                return_complex=True,
            )
            power = torch.einsum("bkm,kc->bcm", stft.abs().pow(2), mel.mel_scale.fb.float())
        db = 10.0 * torch.log10(power.clamp(min=1e-10))
        # torchaudio's AmplitudeToDB on [b, c, m] takes one max over the whole batch; per item
        # equals the original at batch size 1 and keeps items independent of each other.
        return torch.maximum(db, db.amax(dim=(-2, -1), keepdim=True) - self.cfg.top_db)

    def _normalise(self, spec: Tensor) -> Tensor:
        """The input BatchNorm over mels, in float32 whatever the weights' dtype."""
        bn = self.init_bn[1]
        if self.training and bn.training:  # training statistics: the module itself
            return bn(spec.unsqueeze(2).to(bn.weight.dtype)).squeeze(2).float()
        return F.batch_norm(
            spec.float().unsqueeze(2), bn.running_mean.float(), bn.running_var.float(),
            bn.weight.float(), bn.bias.float(), False, 0.0, bn.eps,
        ).squeeze(2)  # fmt: skip

    def forward_features(self, spec: Tensor, key_pad: Tensor | None = None) -> Tensor:
        """Blocks on normalised chunks [b, 1, c, m] -> [b, (f t), d], the original token order."""
        x = self.patch_embed.proj(spec.to(self.patch_embed.proj.weight.dtype))  # [b, d, f, t]
        x = x + self.time_pos_embed[..., : x.shape[-1]] + self.freq_pos_embed
        x = F.dropout(rearrange(x, "b d f t -> b (f t) d"), self.cfg.drop_rate, self.training)
        for block in self.blocks:
            x = block(x, key_pad)
        return self.norm(x)

    def _token_pad(self, padding_mask: Tensor, n: int, length: int) -> Tensor:
        """[b, n, t] True where a time patch touches a frame whose window reaches padding."""
        c, p = self.cfg, self.cfg.patch_stride
        lengths = (~padding_mask).sum(-1)
        reach = c.n_fft - (c.n_fft // 2 if c.center else 0)  # samples right of a frame's start
        clean = torch.where(lengths >= reach, (lengths - reach) // c.hop_size + 1, 0)  # [b]
        t = torch.arange(length // p, device=lengths.device)
        last_frame = (
            torch.arange(n, device=lengths.device)[:, None] * c.target_length + (t[None, :] + 1) * p
        )
        return last_frame[None] > clean[:, None, None]

    def extract_features(
        self, waveforms: Tensor, padding_mask: Tensor | None = None, spec: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Encoder features of raw audio, time-major.

        Args:
            waveforms: [b, s] float 16 kHz waveforms, right-padded.
            padding_mask: [b, s] bool, True on padding samples; None = all valid (and, like
                the original, attention then also sees the zero-padded tail of the last chunk).

        Returns:
            features [b, (n t f), d] and the token mask [b, (n t f)] (True = padding), or None
            when `padding_mask` is None. With a mask (the batched mode), padded tokens are
            also hidden from attention, so padding a batch item leaves its valid tokens
            unchanged. A single clip with no padding samples whose last chunk is zero-padded
            runs unmasked, as the original CED does (`single_clip_as_original`), and
            returns None for the mask: its outputs then match the original's, tail included.
            spec: `self.spectrogram(waveforms)` when the caller has it already (the front
                end is fixed, so a training loop over the same clips computes it once).
        """
        if spec is None:
            spec = self.spectrogram(waveforms)  # [b, c, m]
        spec = self._normalise(spec)
        n, length = self._chunk_layout(spec.shape[-1])
        if length < self.cfg.patch_stride:
            raise ValueError(
                f"CED needs at least {self.cfg.patch_stride} frames, got {spec.shape[-1]}"
            )
        if (
            padding_mask is not None
            and self.cfg.single_clip_as_original
            and waveforms.shape[0] == 1
            and n * length > spec.shape[-1]
            and not bool(padding_mask.any())
        ):
            padding_mask = None  # the original's computation at batch size 1
        spec = F.pad(spec, (0, max(n * length - spec.shape[-1], 0)))[..., : n * length]
        chunks = rearrange(spec, "b c (n m) -> (b n) 1 c m", n=n)
        pad = key_pad = None
        if padding_mask is not None:
            pad = self._token_pad(padding_mask.bool(), n, length)  # [b, n, t]
            key_pad = rearrange(pad, "b n t -> (b n) t").repeat(1, self.n_freq)  # (f t) order
            key_pad = key_pad & ~key_pad.all(-1, keepdim=True)  # an all-padding chunk: no NaN
        x = freq_to_time_major(self.forward_features(chunks, key_pad), self.n_freq)
        x = rearrange(x, "(b n) tf d -> b (n tf) d", n=n)
        if pad is not None:
            pad = rearrange(pad[..., None].expand(-1, -1, -1, self.n_freq), "b n t f -> b (n t f)")
        return x, pad

    def predict(self, waveforms: Tensor) -> Tensor:
        """AudioSet probabilities [b, outputdim]: mean-pooled tokens through `outputlayer`."""
        x, _ = self.extract_features(waveforms)
        return self.outputlayer(x.mean(1)).sigmoid()


def convert_ced_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map the HF layout (`encoder.` prefix, `init_bn.*`) onto the original flat layout."""
    if not any(k.startswith("encoder.") for k in state):
        return dict(state)
    out = {}
    for key, value in state.items():
        key = key.removeprefix("encoder.")
        if key.startswith("init_bn.") and not key.startswith("init_bn.1."):
            key = "init_bn.1." + key.removeprefix("init_bn.")
        out[key] = value
    return out


def infer_ced_config(state: Mapping[str, Tensor]) -> CEDConfig:
    """Width, depth and classes from flat-layout weights; heads from the public size table."""
    try:
        d = state["patch_embed.proj.weight"].shape[0]
        depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        out = state["outputlayer.1.weight"].shape[0]
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"cannot infer the CED size: key {err} missing") from err
    heads = {w: h for w, h in SIZES.values()}.get(d)
    if heads is None:  # the head count is not visible in the weights
        raise CheckpointError(
            f"CED width {d} is not a public size ({sorted(SIZES)}); pass a CEDConfig"
        )
    return CEDConfig(embed_dim=d, depth=depth, num_heads=heads, outputdim=out)


def fit_position_tables(state: dict[str, Tensor], model: CED, where: str = "CED") -> None:
    """Resize a checkpoint's positional tables to `model`'s, in place, as the original does.

    A longer table (e.g. trained on 3001 frames: 187 time positions, for a model built with
    target_length 1012: 63) keeps its first positions; a shorter one is interpolated
    (bilinear, align_corners=False). The frequency table is treated the same way.
    """
    import logging

    for key, dim in (("time_pos_embed", -1), ("freq_pos_embed", -2)):
        if key not in state:
            continue
        table, want = state[key], getattr(model, key).shape[dim]
        have = table.shape[dim]
        if have == want:
            continue
        if have > want:
            state[key] = table[..., :want] if dim == -1 else table[:, :, :want, :]
        else:
            size = (1, want) if dim == -1 else (want, 1)
            state[key] = F.interpolate(table.float(), size=size, mode="bilinear",
                                       align_corners=False).to(table.dtype)  # fmt: skip
        logging.getLogger(__name__).warning(
            "%s: %s has %d positions, the model %d: %s", where, key, have, want,
            "kept the first" if have > want else "interpolated",
        )  # fmt: skip


def load_ced(
    path: str, cfg: CEDConfig | None = None, *, device: torch.device | str | None = None
) -> CED:
    """Load a CED checkpoint (original flat or HF layout; .pt/.bin or .safetensors), strictly.

    Args:
        path: checkpoint file.
        cfg: expected architecture; None infers it from the weights.

    Raises:
        CheckpointError: keys or shapes that do not fit, naming them and the file.
    """
    raw = read_state_file(path)
    for wrapper in ("model", "state_dict"):
        if isinstance(raw, Mapping) and isinstance(raw.get(wrapper), Mapping):
            raw = raw[wrapper]
    if not isinstance(raw, Mapping) or not all(isinstance(v, Tensor) for v in raw.values()):
        raise CheckpointError(f"{path} is not a CED state dict (expected a mapping of tensors)")
    state = convert_ced_state_dict(raw)
    model = CED(cfg if cfg is not None else infer_ced_config(state))
    fit_position_tables(state, model, str(path))
    for key, value in model.state_dict().items():  # front-end buffers: absent in the HF layout
        if key.startswith("front_end.") and key not in state:
            state[key] = value
    load_strict(model, state, str(path), "CED")
    return model.to(device) if device is not None else model
