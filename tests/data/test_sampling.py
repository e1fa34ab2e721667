from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from distill.data.annotations import Item
from distill.data.sampling import (
    SamplingConfig,
    StratifiedBatchSampler,
    length_strata,
    make_sampler,
    plan_stage,
    split_stages,
    text_strata,
    trim_by_length,
    with_replay,
)


def items(n: int, stage: int | None = None, prefix: str = "i") -> list[Item]:
    rng = np.random.default_rng(0)
    return [
        Item(
            f"{prefix}{k}",
            f"/x/{prefix}{k}.wav",
            "w" * int(rng.integers(1, 200)),
            "asr",
            "p",
            duration=float(k + 1),
            stage=stage,
        )  # fmt: skip
        for k in range(n)
    ]


def flat(batches):
    return [i for b in batches for i in b]


def test_trim_drops_shortest_and_longest_five_percent():
    xs = items(100)
    kept = trim_by_length(xs[::-1])  # order must not matter for which are dropped
    durations = sorted(it.duration for it in kept)
    assert len(kept) == 90 and durations[0] == 6.0 and durations[-1] == 95.0
    assert [it.duration for it in kept] == sorted(durations, reverse=True)  # order kept
    assert len(trim_by_length(xs, low=0.1, high=0.0)) == 90
    with pytest.raises(ValueError):
        trim_by_length(xs, low=0.6, high=0.5)


def test_length_strata_are_equal_sized_deciles():
    lengths = np.random.default_rng(1).integers(1, 50, size=1000).tolist()
    strata = length_strata(lengths, 10)
    assert Counter(strata) == dict.fromkeys(range(10), 100)
    for s in range(9):  # bins are ordered by length
        assert max(v for v, b in zip(lengths, strata) if b == s) <= min(
            v for v, b in zip(lengths, strata) if b == s + 1
        )


def test_batches_are_balanced_over_deciles():
    strata = text_strata(items(400), 10)
    sampler = StratifiedBatchSampler(strata, 20, seed=5)
    for batch in sampler.batches(0):
        counts = Counter(strata[i] for i in batch)
        assert set(counts) == set(range(10)) and max(counts.values()) - min(counts.values()) <= 1
    # unequal strata are represented in proportion: a 3:1 split gives 15 and 5 per batch (+-1)
    uneven = [0] * 300 + [1] * 100
    for batch in StratifiedBatchSampler(uneven, 20, seed=5).batches(3):
        assert abs(sum(uneven[i] for i in batch) - 5) <= 1


def test_deterministic_per_seed_and_epoch_and_covers_everything():
    strata = text_strata(items(103), 10)
    a = StratifiedBatchSampler(strata, 8, seed=1)
    b = StratifiedBatchSampler(strata, 8, seed=1)
    assert list(a) == list(b)  # epoch 0
    assert list(a) == list(b)  # epoch 1, auto-advanced
    assert a.epoch == 1 and a.batches(0) != a.batches(1)
    assert StratifiedBatchSampler(strata, 8, seed=2).batches(0) != b.batches(0)
    assert len(a) == 12 and len(set(flat(a.batches(0)))) == 96  # drop_last, no repeats
    full = StratifiedBatchSampler(strata, 8, seed=1, drop_last=False)
    assert len(full) == 13 and set(flat(full.batches(0))) == set(range(103))


def test_ranks_get_disjoint_items_and_equal_batch_counts():
    strata = text_strata(items(101), 10)
    shards = [StratifiedBatchSampler(strata, 5, seed=3, rank=r, world_size=2) for r in range(2)]
    b0, b1 = list(shards[0]), list(shards[1])
    assert len(b0) == len(b1) == len(shards[0]) == 10
    assert not set(flat(b0)) & set(flat(b1))
    single = StratifiedBatchSampler(strata, 10, seed=3)
    assert sorted(flat(b0) + flat(b1)) == sorted(
        flat(single.batches(0))
    )  # same items as one process
    padded = [
        StratifiedBatchSampler(strata, 5, seed=3, rank=r, world_size=2, drop_last=False)
        for r in range(2)
    ]
    assert len(list(padded[0])) == len(list(padded[1])) == 11
    with pytest.raises(ValueError, match="rank"):
        StratifiedBatchSampler(strata, 5, rank=2, world_size=2)


def test_resume_mid_epoch_continues_identically():
    strata = text_strata(items(120), 10)
    reference = StratifiedBatchSampler(strata, 8, seed=7)
    expected = list(reference) + list(reference)  # two full epochs
    run = StratifiedBatchSampler(strata, 8, seed=7)
    it = iter(run)
    seen = [next(it) for _ in range(6)]
    state = run.state_dict()
    assert state["epoch"] == 0 and state["position"] == 6
    resumed = StratifiedBatchSampler(strata, 8, seed=0)  # seed comes from the state
    resumed.load_state_dict(state)
    resumed.set_epoch(0)  # a loop calling set_epoch for the current epoch keeps the position
    seen += list(resumed) + list(resumed)
    assert seen == expected
    # the loop's own count wins when a prefetching DataLoader ran ahead
    assert run.state_dict(position=4)["position"] == 4
    with pytest.raises(ValueError, match="num_items"):
        StratifiedBatchSampler(strata[:-8], 8).load_state_dict(state)


def test_curriculum_stages_with_replay():
    xs = items(100, stage=1, prefix="a") + items(200, stage=2, prefix="b")
    stages = split_stages(xs)
    assert sorted(stages) == [1, 2] and len(stages[1]) == 100
    cfg = SamplingConfig(batch_size=4, replay=0.2, seed=1)
    s1, s2 = plan_stage(stages, 1, cfg), plan_stage(stages, 2, cfg)
    assert len(s1) == 90 and all(it.stage == 1 for it in s1)
    replayed = [it for it in s2 if it.stage == 1]
    assert len(s2) == 180 + 45 and len(replayed) == 45  # 45 / 225 = 20 % replay
    assert plan_stage(stages, 2, cfg) == s2  # deterministic
    assert {it.id for it in replayed} <= {it.id for it in s1}
    assert len(with_replay(stages[2], stages[1], 0.0)) == 200
    assert len(plan_stage({1: stages[1], 2: stages[2]}, 2, SamplingConfig(replay=0.0))) == 180
    sampler = make_sampler(s2, cfg, rank=1, world_size=2)
    assert len(sampler) == 225 // 8


def test_stages_from_separate_files(tmp_path):
    from distill.data.annotations import write_annotations
    from distill.data.sampling import read_stages

    paths = {
        k: write_annotations(items(10 * k, prefix=f"s{k}-"), tmp_path / f"stage{k}.json")
        for k in (1, 2)
    }
    stages = read_stages(paths)
    assert {k: len(v) for k, v in stages.items()} == {1: 10, 2: 20}
    assert {it.stage for it in stages[2]} == {2}


def test_train_weights_mix_files_in_the_set_proportion():
    from distill.data import Item, weighted_items

    labels = [Item(id=f"l{i}", path="x.wav", text="t", task="asr", prompt="p") for i in range(4)]
    pseudo = [Item(id=f"p{i}", path="x.wav", text="t", task="asr", prompt="p") for i in range(10)]
    assert [it.id for it in weighted_items([labels, pseudo], [1.0, 1.0], 0)] == [
        it.id for it in labels + pseudo
    ]
    half = weighted_items([labels, pseudo], [1.0, 0.5], seed=3)
    ids = [it.id for it in half]
    assert ids[:4] == ["l0", "l1", "l2", "l3"] and len(ids) == 9 and len(set(ids)) == 9
    assert ids == [it.id for it in weighted_items([labels, pseudo], [1.0, 0.5], seed=3)]
    assert ids != [it.id for it in weighted_items([labels, pseudo], [1.0, 0.5], seed=4)]
    twice = [it.id for it in weighted_items([labels, pseudo], [2.0, 0.0], seed=0)]
    assert twice == [it.id for it in labels] * 2


def test_train_weights_must_match_the_files():
    from distill.recipe import DataConfig

    with pytest.raises(Exception, match="train_weights has 1 entries for 2"):
        DataConfig(train=["a.json", "b.json"], train_weights=[1.0])
    with pytest.raises(Exception, match=">= 0"):
        DataConfig(train=["a.json"], train_weights=[-1.0])
