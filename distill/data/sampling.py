"""Data-centric sampling: length trimming, text-length strata, curriculum with replay.

The seed report trained in two stages and sampled with care:
  * drop the shortest and longest clips (5 % at each end by default), which are
    mostly silence, truncation or mislabels;
  * draw batches balanced over text-length deciles, so every batch mixes short and
    long targets and the loss scale stays steady;
  * stage 2 replays a share of stage 1 so the earlier skill is not forgotten.

`StratifiedBatchSampler` is deterministic from (seed, epoch), shards across processes
(each rank gets distinct items and the same number of batches) and is resumable:
`state_dict()` holds (epoch, position) and a loaded sampler continues with exactly the
batches the interrupted run had not consumed yet.

Give the sampler to a DataLoader as `batch_sampler=`; it already shards by rank, so do
not let Accelerate re-shard that loader.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Sampler

from distill.data.annotations import Item, read_annotations
from distill.data.audio import AudioError, audio_info


def item_duration(item: Item) -> float:
    """Seconds of audio: the annotation's "duration", else the file header (cached on the item)."""
    if item.duration is None:
        try:
            item.duration = audio_info(item.path).duration
        except AudioError:
            item.duration = 0.0
    return item.duration


def trim_by_length(items: Sequence[Item], low: float = 0.05, high: float = 0.05) -> list[Item]:
    """Drop the `low` share of shortest and the `high` share of longest clips.

    Ties are broken by position, so the result is deterministic; order is kept.
    """
    if not (0 <= low < 1 and 0 <= high < 1 and low + high < 1):
        raise ValueError(f"trim shares must be in [0, 1) with low + high < 1, got {low}, {high}")
    n = len(items)
    order = sorted(range(n), key=lambda i: (item_duration(items[i]), i))
    lo, hi = int(math.floor(low * n)), n - int(math.floor(high * n))
    keep = set(order[lo:hi])
    return [it for i, it in enumerate(items) if i in keep]


def length_strata(lengths: Sequence[float], n_strata: int = 10) -> list[int]:
    """Quantile bin (0 .. n_strata-1) of each value, by rank so bins are equal-sized (+-1)."""
    n = len(lengths)
    order = sorted(range(n), key=lambda i: (lengths[i], i))
    strata = [0] * n
    for rank, i in enumerate(order):
        strata[i] = rank * n_strata // max(n, 1)
    return strata


def text_strata(items: Sequence[Item], n_strata: int = 10) -> list[int]:
    """Text-length decile (by characters of the target text) of each item."""
    return length_strata([len(it.text) for it in items], n_strata)


def split_stages(items: Sequence[Item], default: int = 1) -> dict[int, list[Item]]:
    """Group items by their `stage` field (items without one go to `default`)."""
    stages: dict[int, list[Item]] = {}
    for it in items:
        stages.setdefault(it.stage if it.stage is not None else default, []).append(it)
    return dict(sorted(stages.items()))


def weighted_items(
    files: Sequence[Sequence[Item]], weights: Sequence[float], seed: int
) -> list[Item]:
    """One epoch's items from several files, file i weighted by `weights[i]`.

    A weight w gives floor(w) copies of every item of the file plus a seeded subset of
    round((w - floor(w)) * n) items: 1 keeps the file as it is, 0.5 half of it, 2 twice.
    The subset is a pure function of (seed, file index), so a resumed run sees the same.
    """
    import math
    import random

    out: list[Item] = []
    for i, (items, w) in enumerate(zip(files, weights)):
        whole = math.floor(w)
        out += [it for _ in range(whole) for it in items]
        extra = round((w - whole) * len(items))
        if extra:
            pick = sorted(
                random.Random(f"train-weights:{seed}:{i}").sample(range(len(items)), extra)
            )
            out += [items[j] for j in pick]
    return out


def read_stages(paths: dict[int, str | os.PathLike]) -> dict[int, list[Item]]:
    """Stages kept in separate annotation files: {stage: path} -> {stage: items}."""
    out = {}
    for stage, path in sorted(paths.items()):
        out[stage] = read_annotations(path)
        for it in out[stage]:
            it.stage = stage
    return out


def with_replay(
    current: Sequence[Item], previous: Sequence[Item], share: float, seed: int = 0
) -> list[Item]:
    """The current stage's items plus a fixed random share of the previous stage.

    Args:
        current: this stage's items.
        previous: the earlier stage's items.
        share: replayed items as a share of the resulting mix (0.1 -> 10 % replay).
        seed: seeds the choice of replayed items.
    """
    if not 0 <= share < 1:
        raise ValueError(f"replay share must be in [0, 1), got {share}")
    k = min(len(previous), int(round(share * len(current) / (1 - share))))
    rng = np.random.default_rng([seed, 0x5EED])
    pick = sorted(rng.choice(len(previous), size=k, replace=False).tolist()) if k else []
    return list(current) + [previous[i] for i in pick]


@dataclass
class SamplingConfig:
    """How a stage's items are chosen and batched."""

    batch_size: int = 16  # per process
    trim_low: float = 0.05  # share of shortest clips dropped
    trim_high: float = 0.05  # share of longest clips dropped
    n_strata: int = 10  # text-length quantile bins balanced in every batch
    replay: float = 0.1  # share of stage-2 batches drawn from stage 1
    seed: int = 0
    drop_last: bool = True  # False pads the last global batch by wrapping around

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.n_strata < 1:
            raise ValueError(f"n_strata must be >= 1, got {self.n_strata}")


def plan_stage(stages: dict[int, Sequence[Item]], stage: int, cfg: SamplingConfig) -> list[Item]:
    """The items one curriculum stage trains on: trimmed, plus replay of the stage before.

    Args:
        stages: {stage: items}, from `split_stages(items)` (items carry "stage") or
            `read_stages({1: "stage1.json", 2: "stage2.json"})` (one file per stage).
        stage: the stage to plan.
        cfg: trimming shares, replay share and seed.
    """
    if stage not in stages:
        raise KeyError(f"no items for stage {stage}; stages present: {sorted(stages)}")
    current = trim_by_length(stages[stage], cfg.trim_low, cfg.trim_high)
    earlier = [s for s in stages if s < stage]
    if not earlier or cfg.replay <= 0:
        return current
    previous = trim_by_length(stages[max(earlier)], cfg.trim_low, cfg.trim_high)
    return with_replay(current, previous, cfg.replay, seed=cfg.seed + stage)


class StratifiedBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices balanced over strata, sharded and resumable.

    Each epoch every stratum is shuffled and its items spread evenly over the epoch
    (item j of a stratum of size m sits at time (j + u) / m, u ~ U[0, 1)); sorting by
    that time interleaves strata in proportion to their sizes, so any run of
    consecutive items, and hence any batch, holds each stratum in its share.

    Args:
        strata: stratum of every dataset index (e.g. `text_strata(dataset.items)`).
        batch_size: items per batch on each process.
        seed: the sequence is a pure function of (seed, epoch).
        rank, world_size: this process and the number of processes.
        drop_last: drop the last incomplete global batch (else wrap around to fill it).
    """

    def __init__(
        self,
        strata: Sequence[int],
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.strata = np.asarray(strata, dtype=np.int64)
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch, self.position = 0, 0
        if len(self) == 0:
            raise ValueError(
                f"{len(self.strata)} items make no batch of {batch_size} x {world_size} processes"
            )

    def __len__(self) -> int:
        """Batches per epoch on this process (the same on every rank)."""
        per_step = self.batch_size * self.world_size
        n = len(self.strata)
        return n // per_step if self.drop_last else math.ceil(n / per_step)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """All indices of one epoch in stratified order (identical on every rank)."""
        rng = np.random.default_rng([self.seed, epoch])
        n = len(self.strata)
        times = np.empty(n)
        for s in np.unique(self.strata):
            idx = np.flatnonzero(self.strata == s)
            idx = idx[rng.permutation(len(idx))]
            times[idx] = (np.arange(len(idx)) + rng.random()) / len(idx)
        tiebreak = rng.random(n)
        return np.lexsort((tiebreak, times))

    def batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of one epoch."""
        order = self.epoch_order(epoch)
        per_step = self.batch_size * self.world_size
        need = len(self) * per_step
        if need > len(order):  # drop_last=False: wrap around to fill the last global batch
            order = np.concatenate([order, order[: need - len(order)]])
        order = order[:need].reshape(len(self), self.world_size, self.batch_size)
        return order[:, self.rank].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        if self.position >= len(self):  # the previous epoch was fully consumed
            self.epoch, self.position = self.epoch + 1, 0
        for batch in self.batches(self.epoch)[self.position :]:
            self.position += 1
            yield batch

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning; the current epoch keeps its position (resume)."""
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def state_dict(self, position: int | None = None) -> dict:
        """Where the sampler stands.

        Args:
            position: batches of the current epoch the training loop really consumed.
                A DataLoader with workers prefetches batches, so the sampler's own count
                runs ahead; pass the loop's count to resume exactly.
        """
        return {
            "epoch": self.epoch,
            "position": self.position if position is None else int(position),
            "seed": self.seed,
            "num_items": len(self.strata),
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from a `state_dict()`; the data and sharding must match."""
        for key, mine in (("num_items", len(self.strata)), ("world_size", self.world_size)):
            if key in state and state[key] != mine:
                raise ValueError(f"sampler state has {key}={state[key]}, this sampler has {mine}")
        self.seed = int(state.get("seed", self.seed))
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def make_sampler(
    items: Sequence[Item], cfg: SamplingConfig, *, rank: int = 0, world_size: int = 1
) -> StratifiedBatchSampler:
    """A text-length-stratified batch sampler over `items` (e.g. `dataset.items`)."""
    return StratifiedBatchSampler(
        text_strata(items, cfg.n_strata),
        cfg.batch_size,
        seed=cfg.seed,
        rank=rank,
        world_size=world_size,
        drop_last=cfg.drop_last,
    )
