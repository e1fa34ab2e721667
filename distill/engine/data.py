"""Data for the engine: the resumable, sharded, curriculum-aware training stream.

The stream owns one DataLoader per curriculum stage. Stage 1 runs until
`data.stage2_start` optimizer steps, then stage 2 (with a replayed share of stage 1).
Batches are drawn by `StratifiedBatchSampler`, which shards by rank itself, so the
loaders are *not* handed to `accelerator.prepare`. The stream counts the batches the
loop really consumed (workers prefetch ahead), which is what a checkpoint stores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from distill.contracts import AudioBatch
from distill.data import (
    AudioDataset,
    DataError,
    SamplingConfig,
    StratifiedBatchSampler,
    collate,
    plan_stage,
    read_annotations,
    summarize,
    text_strata,
    weighted_items,
)


def resolve_synth(recipe) -> None:
    """If `data.synth` is set, build (or reuse) the synthetic corpus and point data at it."""
    d = recipe.data
    if not d.synth:
        return
    from distill.data.synth import make_corpus

    params = dict(d.synth)
    out_dir = params.pop("out_dir", None) or str(Path(recipe.output_dir).parent / "synth_data")
    paths = make_corpus(out_dir, **params)
    d.train = d.train or [paths["train"]]
    d.valid = d.valid or paths["valid"]
    d.test = d.test or paths["test"]


class TrainStream:
    """Endless batches for training, with `state_dict()` for exact resume."""

    def __init__(self, recipe, rank: int, world_size: int):
        d = recipe.data
        if not d.train:
            raise DataError("recipe.data.train lists no annotation file (or set data.synth)")
        self.recipe, self.rank, self.world_size = recipe, rank, world_size
        files = [read_annotations(path, require_text=True) for path in d.train]
        if d.train_weights:  # e.g. labels and pseudo-labels mixed in a set proportion
            stage1 = weighted_items(files, d.train_weights, recipe.seed)
        else:
            stage1 = [it for items in files for it in items]
        if not stage1:
            raise DataError(f"data.train_weights {d.train_weights} leave no training item")
        self.stages: dict[int, list] = {1: stage1}
        if d.stage2:
            self.stages[2] = [
                it for path in d.stage2 for it in read_annotations(path, require_text=True)
            ]
        self.cfg = SamplingConfig(
            batch_size=d.batch_size,
            trim_low=d.trim_fraction,
            trim_high=d.trim_fraction,
            n_strata=10 if d.stratify_text_length else 1,
            replay=d.replay_fraction,
            seed=recipe.seed,
        )
        self.datasets: dict[int, AudioDataset] = {}
        self.samplers: dict[int, StratifiedBatchSampler] = {}
        self.loaders: dict[int, DataLoader] = {}
        for stage in self.stages:
            items = plan_stage(self.stages, stage, self.cfg)
            ds = AudioDataset(
                items,
                require_text=True,
                max_bad_fraction=d.max_bad_fraction,
                max_seconds=d.max_seconds,
                progress=rank == 0 and recipe.train.progress,
            ).validate()
            strata = (
                text_strata(ds.items, self.cfg.n_strata) if self.cfg.n_strata > 1 else [0] * len(ds)
            )
            sampler = StratifiedBatchSampler(
                strata, d.batch_size, seed=recipe.seed + stage, rank=rank, world_size=world_size
            )
            self.datasets[stage], self.samplers[stage] = ds, sampler
            self.loaders[stage] = DataLoader(
                ds,
                batch_sampler=sampler,
                collate_fn=collate,
                num_workers=d.num_workers,
                # batches are drawn in this process (the sampler's state lives here), so
                # workers can outlive an epoch: a small labelled set would otherwise spawn
                # a worker every few steps (the demo's CE-only arm: 67 spawns in 600 steps)
                persistent_workers=d.num_workers > 0,
                # own generator: creating an iterator must not consume the global RNG,
                # or a resumed run would draw different dropout masks
                generator=torch.Generator().manual_seed(recipe.seed),
            )
        self.stage = 1
        self.position = {s: 0 for s in self.stages}
        self.epoch = {s: 0 for s in self.stages}
        self._iter = None

    def summary(self) -> dict[str, Any]:
        out = {f"stage{s}": summarize(ds) for s, ds in self.datasets.items()}
        out["batch_size_per_process"] = self.recipe.data.batch_size
        out["processes"] = self.world_size
        return out

    def _stage_for(self, step: int) -> int:
        d = self.recipe.data
        return 2 if 2 in self.stages and step >= d.stage2_start else 1

    def _restart(self) -> None:
        sampler = self.samplers[self.stage]
        sampler.load_state_dict(
            {"epoch": self.epoch[self.stage], "position": self.position[self.stage]}
        )
        self._iter = iter(self.loaders[self.stage])

    def next(self, step: int) -> AudioBatch:
        stage = self._stage_for(step)
        if stage != self.stage or self._iter is None:
            self.stage = stage
            self._restart()
        try:
            batch = next(self._iter)
        except StopIteration:
            self.epoch[self.stage] += 1
            self.position[self.stage] = 0
            self._restart()
            batch = next(self._iter)
        self.position[self.stage] += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "position": dict(self.position), "epoch": dict(self.epoch)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stage = int(state["stage"])
        self.position = {int(k): int(v) for k, v in state["position"].items()}
        self.epoch = {int(k): int(v) for k, v in state["epoch"].items()}
        self._iter = None


def build_train_stream(recipe, rank: int, world_size: int) -> TrainStream:
    return TrainStream(recipe, rank, world_size)


def build_valid_loader(recipe, rank: int, world_size: int) -> DataLoader | None:
    """Validation batches: a fixed, rank-strided share of `data.valid`."""
    d = recipe.data
    if not d.valid:
        return None
    ds = AudioDataset(
        read_annotations(d.valid, require_text=True),
        require_text=True,
        max_bad_fraction=d.max_bad_fraction,
        max_seconds=d.max_seconds,
        progress=False,
    ).validate()
    indices = list(range(rank, len(ds), world_size))
    return DataLoader(
        Subset(ds, indices), batch_size=d.batch_size, collate_fn=collate, num_workers=0
    )
