"""Replay a teacher-signal cache (`distill cache`) as `TeacherSignals`.

Training from the cache needs no teacher in memory. Items are looked up by id, so any
sampling order, shard or process split works; a batch id missing from the cache is an
error that names it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from distill.cache import CacheError, verify_cache
from distill.contracts import AudioBatch, TeacherSignals, TokenizerInfo
from distill.modeling.checkpoint import open_safetensors


class CachedTeacher:
    """`signals(batch)` from the shards under `cache_dir`.

    Args:
        cache_dir: a directory written by `distill cache` / `distill.cache.build_cache`.
        verify: re-hash all shards at start (cheap next to training; catches corruption).
    """

    live = False  # replays stored signals: cannot score new text (on-policy KD)

    def __init__(self, cache_dir: str, *, verify: bool = True):
        self.root = Path(cache_dir)
        self.index = (
            verify_cache(self.root)
            if verify
            else json.loads((self.root / "index.json").read_text())
        )
        self.topk = self.index["topk"]
        self.hidden = tuple(self.index.get("hidden", ()))
        self.vocab_size = int(self.index["vocab_size"])
        self.where = {
            item_id: (shard["file"], i)
            for shard in self.index["shards"]
            for i, item_id in enumerate(shard["ids"])
        }
        pieces_path = self.root / "tokenizer_pieces.json"
        self.tokenizer_info = None
        if pieces_path.is_file():
            tok = self.index.get("tokenizer", {})
            self.tokenizer_info = TokenizerInfo(
                name=tok.get("name", "teacher"), pieces=tuple(json.loads(pieces_path.read_text()))
            )
        self._handles: dict[str, object] = {}

    def _get(self, item_id: str) -> dict[str, torch.Tensor]:
        if item_id not in self.where:
            raise CacheError(f"id {item_id!r} is not in the teacher cache {self.root}")
        shard, i = self.where[item_id]
        if shard not in self._handles:
            self._handles[shard] = open_safetensors(self.root / shard, what="teacher cache shard")
        handle = self._handles[shard]
        prefix = f"{i}."
        return {
            k[len(prefix) :]: handle.get_tensor(k) for k in handle.keys() if k.startswith(prefix)
        }

    @torch.no_grad()
    def signals(self, batch: AudioBatch) -> TeacherSignals:
        rows = [self._get(item_id) for item_id in batch.ids]
        device = batch.waveforms.device
        b = len(rows)
        n = max(1, max(r["token_ids"].shape[0] for r in rows))
        k = rows[0]["topk_values"].shape[-1]
        values = torch.full((b, n, k), float("-inf"))
        indices = torch.zeros((b, n, k), dtype=torch.long)
        token_ids = torch.zeros((b, n), dtype=torch.long)
        offsets = torch.zeros((b, n, 2), dtype=torch.long)
        lse = torch.zeros((b, n))
        mask = torch.zeros((b, n), dtype=torch.bool)
        has_lse = all("logsumexp" in r for r in rows)
        for j, r in enumerate(rows):
            m = r["token_ids"].shape[0]
            values[j, :m] = r["topk_values"].float()
            indices[j, :m] = r["topk_indices"].long()
            token_ids[j, :m] = r["token_ids"].long()
            if "offsets" in r:
                offsets[j, :m] = r["offsets"].long()
            if has_lse:
                lse[j, :m] = r["logsumexp"]
            mask[j, :m] = True
        values[~mask] = 0.0  # padded rows stay finite; the mask excludes them
        hidden = {}
        for name in ("qformer", "speech", "audio", "llm_hidden"):
            if all(name in r for r in rows):
                hidden[name] = _pad(
                    [r[name].float() for r in rows], n if name == "llm_hidden" else None
                )
        qmask = None
        if "qformer" in hidden and all("qformer_mask" in r for r in rows):
            qmask = _pad([r["qformer_mask"].bool() for r in rows], None)
        sig = TeacherSignals(
            mask=mask,
            token_ids=token_ids,
            offsets=offsets,
            tokenizer=self.tokenizer_info,
            ids=list(batch.ids),
            topk_values=values,
            topk_indices=indices,
            logsumexp=lse if has_lse else None,
            vocab_size=self.vocab_size,
            qformer_mask=qmask,
            **hidden,
        )
        for name, value in vars(sig).items():
            if isinstance(value, torch.Tensor):
                setattr(sig, name, value.to(device))
        return sig


def _pad(tensors: list[torch.Tensor], length: int | None) -> torch.Tensor:
    """Stack along a new batch dim, zero-padding dim 0 to `length` (or the max)."""
    length = length or max(t.shape[0] for t in tensors)
    out = torch.zeros((len(tensors), length, *tensors[0].shape[1:]), dtype=tensors[0].dtype)
    for i, t in enumerate(tensors):
        out[i, : t.shape[0]] = t
    return out
