"""Frozen-encoder features on disk: computed once, read back exactly, never by other encoders."""

import json

import pytest
import torch
from safetensors.torch import save_file

from distill._instantiate import ConfigError, instantiate
from distill.engine.features import attach_store, build_feature_store
from distill.engine.trainer import Trainer
from distill.modeling.feature_cache import FeatureStoreError, FrozenFeatureCache

CACHED = {"train.cache_frozen_features": "true", "optim.max_steps": 3, "train.save_every": 3,
          "train.eval_every": 0}  # fmt: skip


def _student(recipe):
    return instantiate(recipe.student, config_key="student")


def test_store_rows_equal_the_encoders_and_training_reads_them(make_recipe, corpus, tmp_path):
    recipe = make_recipe("baseline", out="plain", **CACHED)
    model = _student(recipe)
    store = tmp_path / "store"
    out = build_feature_store(model, [corpus["train"], corpus["valid"]], store, batch_size=5,
                              progress=False)  # fmt: skip
    assert out == store / f"{model.frozen_fingerprint()}.safetensors"
    cache = FrozenFeatureCache.load(store, model.frozen_fingerprint())
    n_items = len(json.loads(open(corpus["train"]).read())["annotation"]) + len(
        json.loads(open(corpus["valid"]).read())["annotation"]
    )
    assert len(cache) == 2 * n_items  # one speech and one audio row per clip

    # a stored row is what the encoder computes for the clip alone
    from distill.data.annotations import read_annotations
    from distill.data.dataset import AudioDataset, collate

    example = AudioDataset(read_annotations(corpus["train"])[:1], progress=False)[0]
    batch = collate([example])
    with torch.no_grad():
        mel = model.log_mel(batch.waveforms, batch.lengths)
        ref = model.speech_encoder(mel).last_hidden_state[0]
    key = ("speech", batch.ids[0], int(batch.lengths[0]))
    torch.testing.assert_close(cache._rows[key], ref, atol=1e-5, rtol=1e-5)

    # training from the store: no encoder call, and the same losses as computing the rows
    plain = Trainer(recipe)
    plain.fit()
    stored = Trainer(make_recipe("baseline", out="stored", **CACHED,
                                 **{"train.feature_store": str(store)}))  # fmt: skip
    stored.fit()
    assert stored.student.feature_cache.misses == 0 and stored.student.feature_cache.hits > 0
    assert plain.student.feature_cache.misses > 0

    def losses(run):
        lines = (tmp_path / run / "train_log.jsonl").read_text().splitlines()
        return [r["loss"] for r in map(json.loads, lines) if "loss" in r]

    assert losses("stored") == pytest.approx(losses("plain"), abs=1e-6)


def test_fingerprint_follows_the_encoders_only(make_recipe):
    recipe = make_recipe("baseline", **CACHED)
    a, b = _student(recipe), _student(recipe)
    with torch.no_grad():
        b.speech_llama_proj.weight.add_(1.0)  # the bridge is not part of the rows
    assert a.frozen_fingerprint() == b.frozen_fingerprint()
    # where the encoder was loaded from (from_pretrained records it) is not what it computes:
    # a world or run directory copied elsewhere keeps its store
    before = b.frozen_fingerprint()
    b.speech_encoder.config._name_or_path = "/elsewhere/foundation/speech_encoder"
    assert b.frozen_fingerprint() == before
    b.speech_encoder.config.num_mel_bins += 1  # a config field that shapes the rows does count
    assert b.frozen_fingerprint() != before
    b.speech_encoder.config.num_mel_bins -= 1
    with torch.no_grad():
        next(b.speech_encoder.parameters()).view(-1)[0] += 1e-3
    assert a.frozen_fingerprint() != b.frozen_fingerprint()


def test_foreign_or_corrupt_store_files_fail_naming_the_file(make_recipe, tmp_path):
    model = _student(make_recipe("baseline", **CACHED))
    fp = model.frozen_fingerprint()
    assert len(attach_store(model, tmp_path / "empty")) == 0  # no file yet: an empty cache
    path = FrozenFeatureCache.store_file(tmp_path, fp)
    save_file({"speech/3/a": torch.zeros(2, 2)}, path, metadata={"fingerprint": "other"})
    with pytest.raises(FeatureStoreError, match=str(path)):
        FrozenFeatureCache.load(tmp_path, fp)
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(FeatureStoreError, match="not a readable feature store"):
        FrozenFeatureCache.load(tmp_path, fp)


def test_feature_store_needs_the_cache(make_recipe, tmp_path):
    with pytest.raises(ConfigError, match="cache_frozen_features"):
        make_recipe("baseline", **{"train.feature_store": str(tmp_path)})
