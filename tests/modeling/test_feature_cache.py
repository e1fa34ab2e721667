"""FrozenFeatureCache: a cached forward equals an uncached one, and only frozen encoders cache."""

import torch

from distill.modeling.feature_cache import FrozenFeatureCache, stack_padded
from distill.modeling.tiny import build_tiny
from tests.modeling.conftest import make_batch


def _model(tokenizer_dirs, **kw):
    return build_tiny("student", tokenizer_dirs["bpe"], seed=0, audio_encoder="ced", **kw).eval()


def test_cached_forward_equals_uncached(tokenizer_dirs):
    model = _model(tokenizer_dirs)
    batch = make_batch(answers=("the dog", "a cat sat"), lengths=(40_000, 17_000))
    hidden = ("speech", "audio", "qformer")
    with torch.no_grad():
        ref = model(batch, hidden=hidden)
        model.feature_cache = cache = FrozenFeatureCache()
        first = model(batch, hidden=hidden)  # fills the cache
        assert cache.misses == 4 and cache.hits == 0 and len(cache) == 4  # 2 items x 2 streams
        # the shorter item alone, then in a batch with a different partner: served from cache
        second = model(batch, hidden=hidden)
        assert cache.hits == 4
    for out in (first, second):
        for name in ("logits", "speech", "audio", "qformer"):
            torch.testing.assert_close(getattr(out, name), getattr(ref, name), atol=1e-5, rtol=1e-5)


def test_item_cached_in_another_batch_matches(tokenizer_dirs):
    model = _model(tokenizer_dirs)
    a = make_batch(answers=("the dog", "a cat"), lengths=(40_000, 17_000), seed=0)
    with torch.no_grad():
        ref = model(a.select([1]), hidden=("audio",))
        model.feature_cache = FrozenFeatureCache()
        model(a, hidden=("audio",))  # item 1 cached while padded to 40,000 samples
        got = model(a.select([1]), hidden=("audio",))
    torch.testing.assert_close(got.audio, ref.audio, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.logits, ref.logits, atol=1e-5, rtol=1e-5)


def test_trainable_encoder_is_never_cached(tokenizer_dirs):
    model = _model(tokenizer_dirs, freeze_whisper=False, freeze_audio_encoder=False)
    model.feature_cache = cache = FrozenFeatureCache()
    model(make_batch())
    assert len(cache) == 0 and cache.misses == 0


def test_max_items_bounds_the_cache_and_stack_padded():
    cache = FrozenFeatureCache(max_items=1)
    rows = cache.rows("speech", ["a", "b"], torch.tensor([3, 2]),
                      lambda idx: [torch.full((2, 1), float(i)) for i in idx])  # fmt: skip
    assert len(cache) == 1 and [r[0, 0].item() for r in rows] == [0.0, 1.0]
    out, pad = stack_padded([torch.ones(2, 3), torch.ones(1, 3)], 3)
    assert out.shape == (2, 3, 3) and pad.tolist() == [[False, False, True], [False, True, True]]
    assert out[1, 1:].abs().sum() == 0
