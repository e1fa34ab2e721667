"""Frozen-encoder features on disk, computed once for a corpus and read by every later run.

With Whisper and BEATs/CED frozen (SALMONN's recipe and every student here), their output
for a clip never changes: `build_feature_store` runs the encoders once over the clips of some
annotation files and writes the rows to `<store>/<fingerprint>.safetensors`
(`FrozenFeatureCache.save`). A recipe with `train.cache_frozen_features` and
`train.feature_store: <store>` then starts every model whose encoders have that fingerprint
(a teacher and a student over the same encoders alike) with those rows, so training, the
live teacher and validation skip the front ends from the first step. Rows the store lacks
are computed and cached in memory as without a store; evaluation's timings never use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from distill.modeling.feature_cache import FrozenFeatureCache


def build_feature_store(
    model,
    annotations: Sequence[str | Path],
    store: str | Path,
    *,
    batch_size: int = 32,
    max_seconds: float = 30.0,
    progress: bool = True,
) -> Path:
    """Encode every clip of `annotations` with `model`'s frozen encoders into `store`.

    Clips already in the store are skipped, so a store can grow by later calls (e.g. a new
    manifest). Answers are not needed: an audio-only manifest is valid input.

    Args:
        model: an `AudioLLM` (only its frozen encoders run).
        annotations: SALMONN annotation files; items are keyed by id and clip length, as
            the training loop keys them (read with the same `max_seconds`).
        store: the store directory.
        batch_size: clips per encoder call.
        max_seconds: the recipe's `data.max_seconds` (clips are cut there before encoding).
        progress: a tqdm bar over the clips.

    Returns:
        The store file (`<store>/<fingerprint>.safetensors`).
    """
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from distill.data.annotations import read_annotations
    from distill.data.dataset import AudioDataset, collate

    seen: set[str] = set()
    items = []
    for path in annotations:
        for item in read_annotations(path):
            if item.id not in seen:
                seen.add(item.id)
                items.append(item)
    fingerprint = model.frozen_fingerprint()
    cache = FrozenFeatureCache.load(store, fingerprint, device=model.device)
    before = len(cache)
    ds = AudioDataset(items, require_text=False, max_seconds=max_seconds, progress=False)
    loader = DataLoader(ds.validate(), batch_size=batch_size, collate_fn=collate)
    previous, was_training = model.feature_cache, model.training
    model.feature_cache = cache
    model.eval()
    try:
        # no_grad, not inference_mode: rows must stay usable in later autograd graphs
        with torch.no_grad():
            bar = tqdm(total=len(ds), desc="frozen features", unit="clip", disable=not progress)
            for batch in loader:
                model.encode_frozen(batch)
                bar.update(len(batch))
            bar.close()
    finally:
        model.feature_cache = previous
        model.train(was_training)
    out = FrozenFeatureCache.store_file(store, fingerprint)
    if len(cache) != before or not out.is_file():
        out = cache.save(store, fingerprint)
    return out


def attach_store(model, store: str | Path | None) -> FrozenFeatureCache | None:
    """Give `model` a `FrozenFeatureCache`, preloaded from `store` when one fits its encoders.

    Returns the cache, or None when `model` has no frozen encoders to cache.
    """
    if not hasattr(model, "feature_cache"):
        return None
    if store is None:
        cache = FrozenFeatureCache()
    else:
        cache = FrozenFeatureCache.load(store, model.frozen_fingerprint(), device=model.device)
    model.feature_cache = cache
    return cache
