"""SALMONN's window-level Q-Former, written as a small BERT-style module.

Glossary: b batch, t encoder frames, c encoder channels (Whisper d [+ audio d]),
w windows, k frames per window, q queries per window, h Q-Former hidden, H heads.

The encoder frames are cut into non-overlapping windows of k = round(50 * 0.333333) = 17
frames (kernel = stride, the tail that does not fill a window is dropped: 1500 frames
-> 88 windows). Each window is a tiny "image": q learned queries (SALMONN: 1) attend to
themselves, cross-attend to the window's k frames, and pass a query FFN. Every layer
has cross-attention (BLIP-2 with cross_attention_freq = 1).

Parameter names equal the keys under SALMONN's `speech_Qformer.` (a BLIP-2
`BertLMHeadModel`), so released checkpoints load by name. The BLIP-2 parts SALMONN sets
to None (text FFN `intermediate`/`output`, word/position embeddings, `cls`) do not exist
here; `UNUSED_QFORMER_KEYS` matches them so loaders can skip them.
"""

from __future__ import annotations

import math
import re

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.nn import functional as F

LAYER_NORM_EPS = 1e-12  # bert-base-uncased
DROPOUT = 0.1  # bert-base hidden and attention dropout, as SALMONN trains it

# Keys of a SALMONN/BLIP-2 Q-Former state dict that this module does not use.
UNUSED_QFORMER_KEYS = re.compile(
    r"(^|\.)bert\.embeddings\.(word_embeddings|position_embeddings|position_ids)"
    r"|(^|\.)bert\.encoder\.layer\.\d+\.(intermediate|output)\."
    r"|(^|\.)cls\."
)


class _SelfAttention(nn.Module):
    """Multi-head attention projections (`query`, `key`, `value`); keys/values may be wider."""

    def __init__(self, hidden: int, heads: int, kv_width: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(kv_width, hidden)
        self.value = nn.Linear(kv_width, hidden)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        """x [B, q, h] attends to context [B, k, c] -> [B, q, h]."""
        q, k, v = (
            rearrange(proj(src), "b n (H e) -> b H n e", H=self.heads)
            for proj, src in ((self.query, x), (self.key, context), (self.value, context))
        )
        p = getattr(self, "dropout_p", DROPOUT) if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=1 / math.sqrt(q.shape[-1]))
        return rearrange(out, "b H n e -> b n (H e)")


class _Residual(nn.Module):
    """`dense` -> dropout -> `LayerNorm`(x + residual), BERT's output block."""

    def __init__(self, d_in: int, hidden: int) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(DROPOUT)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class _Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_width: int) -> None:
        super().__init__()
        self.self = _SelfAttention(hidden, heads, kv_width)
        self.output = _Residual(hidden, hidden)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        return self.output(self.self(x, context), x)


class _Intermediate(nn.Module):
    def __init__(self, hidden: int, ffn: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, ffn)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))  # exact (erf) GELU, bert's "gelu"


class QFormerLayer(nn.Module):
    """Self-attention over the queries, cross-attention to the window, query FFN."""

    def __init__(self, hidden: int, heads: int, ffn: int, encoder_width: int) -> None:
        super().__init__()
        self.attention = _Attention(hidden, heads, hidden)
        self.crossattention = _Attention(hidden, heads, encoder_width)
        self.intermediate_query = _Intermediate(hidden, ffn)
        self.output_query = _Residual(ffn, hidden)

    def forward(self, x: Tensor, frames: Tensor) -> Tensor:
        x = self.attention(x, x)
        x = self.crossattention(x, frames)
        return self.output_query(self.intermediate_query(x), x)


class _Embeddings(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.LayerNorm = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(DROPOUT)

    def forward(self, queries: Tensor) -> Tensor:
        return self.dropout(self.LayerNorm(queries))


class _Encoder(nn.Module):
    def __init__(self, layers: list[QFormerLayer]) -> None:
        super().__init__()
        self.layer = nn.ModuleList(layers)


class _Bert(nn.Module):
    def __init__(self, hidden: int, layers: int, heads: int, ffn: int, encoder_width: int) -> None:
        super().__init__()
        self.embeddings = _Embeddings(hidden)
        self.encoder = _Encoder(
            [QFormerLayer(hidden, heads, ffn, encoder_width) for _ in range(layers)]
        )


class WindowQFormer(nn.Module):
    """The Q-Former applied to every window independently.

    Args:
        hidden: h (768 in SALMONN).
        layers: number of BERT layers (2).
        heads: attention heads (12).
        ffn: query FFN width (3072).
        encoder_width: c, Whisper width plus audio-encoder width (1280 + 768 = 2048).
        dropout: hidden and attention dropout (BERT's 0.1, as SALMONN trains it).
    """

    def __init__(
        self,
        hidden: int,
        layers: int,
        heads: int,
        ffn: int,
        encoder_width: int,
        dropout: float = DROPOUT,
    ) -> None:
        super().__init__()
        self.hidden = hidden
        self.encoder_width = encoder_width
        self.bert = _Bert(hidden, layers, heads, ffn, encoder_width)
        for module in self.modules():
            if isinstance(module, nn.Dropout):
                module.p = dropout
            elif isinstance(module, _SelfAttention):
                module.dropout_p = dropout

    def forward(self, queries: Tensor, windows: Tensor) -> Tensor:
        """Run the queries against each window.

        Args:
            queries: [1, q, h] learned query tokens (`speech_query_tokens`).
            windows: [b, w, k, c] encoder frames cut into windows.

        Returns:
            [b, w * q, h] query outputs, window-major (window 0's queries first).
        """
        b, w = windows.shape[:2]
        frames = rearrange(windows, "b w k c -> (b w) k c")
        x = self.bert.embeddings(queries.expand(b * w, -1, -1).to(frames.dtype))
        for layer in self.bert.encoder.layer:
            x = layer(x, frames)
        return rearrange(x, "(b w) q h -> b (w q) h", b=b, w=w)


def window_size(frames_per_second: float, seconds: float) -> int:
    """Frames per window (or stride): round(frames/s * seconds); 17 for Whisper at 1/3 s."""
    return max(1, round(frames_per_second * seconds))


def count_windows(num_frames: int, kernel: int, stride: int) -> int:
    """Windows that unfold takes from t frames (the tail shorter than a window is dropped)."""
    return 0 if num_frames < kernel else (num_frames - kernel) // stride + 1


def split_windows(x: Tensor, kernel: int, stride: int) -> Tensor:
    """[b, t, c] -> [b, w, k, c], equal to SALMONN's `F.unfold` over time."""
    if x.shape[1] < kernel:
        raise ValueError(f"{x.shape[1]} encoder frames are fewer than one window ({kernel} frames)")
    return rearrange(x.unfold(1, kernel, stride), "b w c k -> b w k c")


def window_mask(real_frames: Tensor, num_windows: int, stride: int, queries: int = 1) -> Tensor:
    """[b, w * q] bool, True for windows that start inside the real (unpadded) audio.

    Args:
        real_frames: [b] encoder frames that cover real audio.
        num_windows: w.
        stride: frames between window starts.
        queries: q tokens per window (each window's mask is repeated q times).
    """
    starts = torch.arange(num_windows, device=real_frames.device) * stride
    mask = starts[None, :] < real_frames[:, None]
    return mask.repeat_interleave(queries, dim=1)
