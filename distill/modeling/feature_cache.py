"""Outputs of frozen encoders, computed once per clip and reused.

Glossary: b batch, t encoder frames, n audio-encoder tokens, d width.

In SALMONN and in every student here, Whisper and BEATs/CED are frozen: in eval mode,
without gradients, their output for a clip never changes during training. A
`FrozenFeatureCache` attached to an `AudioLLM` (`model.feature_cache = FrozenFeatureCache()`)
keeps each clip's encoder output (before the trainable `ln_speech` / `ln_audio`), keyed by
item id and clip length, so every later epoch and every stage skips the front ends and the
encoders. The cached rows are the values the encoder computed for the clip, so a cached
forward equals an uncached one up to the float rounding of a different batch composition.

Memory: one row per clip, in the model's dtype: t x d_whisper + n x d_audio values. That is
about 85 KB for the demo's tiny encoders, but 7.7 MB (fp32) for a 30 s whisper-large clip:
for real corpora keep `max_items` bounded or leave the cache off.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


class FrozenFeatureCache:
    """id -> encoder output rows of frozen encoders (in memory).

    Args:
        max_items: stop adding rows after this many clips (None: no limit); rows already
            cached keep being served.
    """

    def __init__(self, max_items: int | None = None) -> None:
        self.max_items = max_items
        self._rows: dict[tuple[str, str, int], Tensor] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._rows)

    def clear(self) -> None:
        self._rows.clear()
        self.hits = self.misses = 0

    def rows(
        self,
        stream: str,
        ids: Sequence[str],
        lengths: Tensor,
        compute: Callable[[list[int]], list[Tensor]],
    ) -> list[Tensor]:
        """Each item's cached row, computing (and caching) the missing ones in one call.

        Args:
            stream: "speech" or "audio" (one model may cache both).
            ids: b item ids.
            lengths: [b] valid samples; part of the key, so a re-cut clip is not confused.
            compute: given the batch positions of the missing items, their rows (in order).

        Returns:
            b tensors, one per item, on the device `compute` put them.
        """
        keys = [(stream, str(i), int(n)) for i, n in zip(ids, lengths.tolist())]
        missing = [k for k, key in enumerate(keys) if key not in self._rows]
        fresh = dict(zip(missing, compute(missing))) if missing else {}
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        for k, row in fresh.items():
            if self.max_items is None or len(self._rows) < self.max_items:
                self._rows[keys[k]] = row.detach()
        return [fresh[k] if k in fresh else self._rows[key] for k, key in enumerate(keys)]


def stack_padded(rows: Sequence[Tensor], length: int) -> tuple[Tensor, Tensor]:
    """Rows [n_i, d] zero-padded (or cut) to `length`: [b, length, d] and pad mask [b, length]."""
    b, d = len(rows), rows[0].shape[-1]
    out = rows[0].new_zeros(b, length, d)
    pad = torch.ones(b, length, dtype=torch.bool, device=rows[0].device)
    for i, row in enumerate(rows):
        n = min(row.shape[0], length)
        out[i, :n] = row[:n]
        pad[i, :n] = False
    return out, pad
