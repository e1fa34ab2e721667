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

On disk (`save` / `load`): one safetensors file per set of frozen encoders, named by their
fingerprint (`AudioLLM.frozen_fingerprint`: a hash of the encoders' weights, the log-mel
front end and the dtype), so a store is only ever read by models whose encoders would
compute the very same rows; every later stage and run reads it instead of recomputing.
`distill.engine.features.build_feature_store` fills one; `train.feature_store` reads it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from distill.errors import DistillError

FORMAT = "distill-frozen-features/1"


class FeatureStoreError(DistillError, ValueError):
    """A feature store file that cannot be read, or that other encoders wrote."""


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

    # ------------------------------------------------------------------ on disk
    @staticmethod
    def store_file(store: str | Path, fingerprint: str) -> Path:
        """The file of `store` (a directory) that holds the rows of these encoders."""
        return Path(store) / f"{fingerprint}.safetensors"

    def save(self, store: str | Path, fingerprint: str) -> Path:
        """Write every cached row to `store/<fingerprint>.safetensors` (atomically)."""
        from safetensors.torch import save_file

        out = self.store_file(store, fingerprint)
        out.parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            f"{stream}/{length}/{item}": row.detach().contiguous().cpu()
            for (stream, item, length), row in self._rows.items()
        }
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        save_file(tensors, tmp, metadata={"format": FORMAT, "fingerprint": fingerprint})
        os.replace(tmp, out)
        return out

    @classmethod
    def load(
        cls, store: str | Path, fingerprint: str, *, device: torch.device | str | None = None
    ) -> FrozenFeatureCache:
        """A cache holding the rows of `store/<fingerprint>.safetensors`, or empty if none.

        Raises:
            FeatureStoreError: the file is unreadable, or its recorded fingerprint is not
                `fingerprint` (the file was renamed or written by other encoders).
        """
        from safetensors import safe_open

        cache = cls()
        path = cls.store_file(store, fingerprint)
        if not path.is_file():
            return cache
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                if meta.get("format") != FORMAT or meta.get("fingerprint") != fingerprint:
                    raise FeatureStoreError(
                        f"{path}: written for encoders {meta.get('fingerprint')!r} "
                        f"(format {meta.get('format')!r}), not {fingerprint!r}; delete it "
                        "or point train.feature_store elsewhere"
                    )
                for key in f.keys():
                    stream, length, item = key.split("/", 2)
                    row = f.get_tensor(key)
                    cache._rows[(stream, item, int(length))] = (
                        row if device is None else row.to(device)
                    )
        except FeatureStoreError:
            raise
        except Exception as err:  # safetensors raises its own error types on corrupt files
            raise FeatureStoreError(f"{path}: not a readable feature store ({err})") from err
        return cache


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
