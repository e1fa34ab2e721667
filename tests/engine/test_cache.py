"""The teacher-signal cache: written once, verified, replayed equal to the live teacher."""

import json

import pytest
import torch

from distill.cache import CacheError, build_cache, verify_cache
from distill.data import read_annotations
from distill.engine.trainer import Trainer
from distill.presets import build_model
from teachers import AudioLLMTeacher, CachedTeacher

K = 8


@pytest.fixture(scope="module")
def cache_dir(corpus, tmp_path_factory):
    teacher = AudioLLMTeacher(
        model=build_model("tiny-teacher", seed=1), topk=K, hidden=("qformer",)
    )
    items = read_annotations(corpus["train"])
    out = tmp_path_factory.mktemp("cache")
    build_cache(teacher, items, out, topk=K, batch_size=4, shard_size=8, progress=False)
    return out


def test_cache_is_complete_and_checked(cache_dir, corpus):
    index = verify_cache(cache_dir)
    items = read_annotations(corpus["train"])
    assert index["num_items"] == len(items) and index["complete"]
    assert [i for s in index["shards"] for i in s["ids"]] == [it.id for it in items]
    assert index["hidden"] == ["qformer"]


def test_cache_replays_live_signals(cache_dir, corpus):
    from distill.data import AudioDataset, collate

    items = read_annotations(corpus["train"])[:3]
    ds = AudioDataset(items)
    batch = collate([ds.load(i) for i in range(3)])
    live = AudioLLMTeacher(
        model=build_model("tiny-teacher", seed=1), topk=K, hidden=("qformer",)
    ).signals(batch)
    cached = CachedTeacher(str(cache_dir)).signals(batch)
    assert torch.equal(live.mask, cached.mask)
    assert torch.equal(live.token_ids[live.mask], cached.token_ids[cached.mask])
    assert torch.equal(live.topk_indices[live.mask], cached.topk_indices[cached.mask])
    # values are stored in fp16
    torch.testing.assert_close(
        cached.topk_values[cached.mask], live.topk_values[live.mask], atol=2e-2, rtol=1e-3
    )
    assert cached.tokenizer.same_as(live.tokenizer)
    torch.testing.assert_close(cached.qformer, live.qformer, atol=2e-2, rtol=1e-3)


def test_training_from_cache_matches_live_first_step(make_recipe, cache_dir):
    live = make_recipe("ddat", out="live", **{"optim.max_steps": 1})
    live.teacher = {
        "_component_": "teachers.AudioLLMTeacher",
        "model": {
            "_component_": "distill.presets.build_model",
            "preset": "tiny-teacher",
            "seed": 1,
        },
        "topk": K,
    }
    cached = make_recipe("ddat", out="cached", **{"optim.max_steps": 1})
    cached.teacher = {"_component_": "teachers.CachedTeacher", "cache_dir": str(cache_dir)}
    losses = []
    for recipe in (live, cached):
        trainer = Trainer(recipe)
        trainer.fit()
        first = json.loads((trainer.out / "train_log.jsonl").read_text().splitlines()[0])
        losses.append(first["loss"])
    assert abs(losses[0] - losses[1]) <= 1e-3 * abs(losses[0]), losses


def test_corrupt_shard_and_missing_id_are_named(cache_dir, tmp_path, corpus):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(cache_dir, broken)
    shard = sorted(broken.glob("shard_*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CacheError, match=shard.name):
        verify_cache(broken)
    from distill.data import AudioDataset, collate

    items = read_annotations(corpus["valid"])[:1]
    batch = collate([AudioDataset(items).load(0)])
    with pytest.raises(CacheError, match=items[0].id):
        CachedTeacher(str(cache_dir)).signals(batch)


def test_interrupted_cache_resumes(corpus, tmp_path):
    teacher = AudioLLMTeacher(model=build_model("tiny-teacher", seed=1), topk=K)
    items = read_annotations(corpus["train"])[:16]
    out = tmp_path / "c"
    build_cache(teacher, items, out, topk=K, batch_size=4, shard_size=8, progress=False)
    first = (out / "shard_00000.safetensors").stat().st_mtime_ns
    # simulate a crash after the first shard: drop the second and mark incomplete
    index = json.loads((out / "index.json").read_text())
    (out / "shard_00001.safetensors").unlink()
    index["complete"] = False
    (out / "index.json").write_text(json.dumps(index))
    with pytest.raises(CacheError, match="incomplete"):
        verify_cache(out)
    build_cache(teacher, items, out, topk=K, batch_size=4, shard_size=8, progress=False)
    assert (out / "shard_00000.safetensors").stat().st_mtime_ns == first, (
        "finished shard was redone"
    )
    verify_cache(out)
