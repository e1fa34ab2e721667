"""Window maths, Q-Former key names and the Whisper log-mel front end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from distill.modeling.qformer import (
    UNUSED_QFORMER_KEYS,
    WindowQFormer,
    count_windows,
    split_windows,
    window_mask,
    window_size,
)
from distill.modeling.whisper import LogMel


def test_real_whisper_gives_88_windows_of_17_frames():
    k = window_size(50.0, 0.333333)
    assert k == 17 == round(1500 * 0.333333 / 30.0)  # SALMONN's formula
    assert count_windows(1500, k, k) == 88
    assert 1500 - 88 * 17 == 4  # the last 4 frames are dropped


@pytest.mark.parametrize(
    ("frames", "seconds", "expected"),
    [(150, 0.333333, 8), (150, 0.2, 15), (16, 0.333333, 0), (17, 0.333333, 1), (50, 1.0, 1)],
)
def test_window_counts_for_short_inputs(frames, seconds, expected):
    k = window_size(50.0, seconds)
    assert count_windows(frames, k, k) == expected
    if expected:
        assert split_windows(torch.zeros(1, frames, 3), k, k).shape == (1, expected, k, 3)


def test_split_windows_equals_salmonn_unfold():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 40, 5, generator=g)  # [b, t, c]
    k = 7
    b, t, c = x.shape
    ref = F.unfold(x.transpose(1, 2).unsqueeze(2), kernel_size=(1, k), stride=(1, k))
    ref = ref.view(b, c, k, -1).permute(0, 3, 2, 1)  # [b, w, k, c], as SALMONN reshapes it
    torch.testing.assert_close(split_windows(x, k, k), ref)


def test_split_windows_rejects_too_few_frames():
    with pytest.raises(ValueError, match="fewer than one window"):
        split_windows(torch.zeros(1, 5, 2), 17, 17)


def test_window_mask_marks_windows_with_real_audio():
    mask = window_mask(torch.tensor([150, 63, 1]), num_windows=8, stride=17)
    assert mask.sum(1).tolist() == [8, 4, 1]  # 63 frames: windows start at 0, 17, 34, 51
    assert window_mask(torch.tensor([20]), 3, 17, queries=2).tolist() == [[True] * 4 + [False] * 2]


def test_qformer_state_dict_uses_salmonn_key_names():
    q = WindowQFormer(hidden=16, layers=2, heads=4, ffn=32, encoder_width=24)
    keys = set(q.state_dict())
    for i in range(2):
        p = f"bert.encoder.layer.{i}."
        for name in ("query", "key", "value"):
            assert f"{p}attention.self.{name}.weight" in keys
            assert f"{p}crossattention.self.{name}.weight" in keys
        for name in ("attention.output.dense", "attention.output.LayerNorm", "crossattention.output.dense",
                     "crossattention.output.LayerNorm", "intermediate_query.dense", "output_query.dense",
                     "output_query.LayerNorm"):  # fmt: skip
            assert f"{p}{name}.weight" in keys and f"{p}{name}.bias" in keys
    assert "bert.embeddings.LayerNorm.weight" in keys
    assert q.state_dict()["bert.encoder.layer.0.crossattention.self.key.weight"].shape == (16, 24)
    assert not any(UNUSED_QFORMER_KEYS.search(k) for k in keys)
    for unused in ("bert.encoder.layer.0.output.dense.weight", "bert.encoder.layer.1.intermediate.dense.bias",
                   "bert.embeddings.word_embeddings.weight", "bert.embeddings.position_ids", "cls.predictions.bias"):  # fmt: skip
        assert UNUSED_QFORMER_KEYS.search(unused), unused


def test_qformer_runs_each_window_independently():
    torch.manual_seed(0)
    q = WindowQFormer(hidden=16, layers=2, heads=4, ffn=32, encoder_width=8).eval()
    queries = torch.randn(1, 2, 16)
    windows = torch.randn(3, 4, 5, 8)
    out = q(queries, windows)
    assert out.shape == (3, 8, 16)
    alone = q(queries, windows[1:2, 2:3])
    torch.testing.assert_close(out[1:2, 4:6], alone)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_whisper_feature_extractor(n_mels):
    from transformers import WhisperFeatureExtractor

    g = torch.Generator().manual_seed(0)
    wav = 0.1 * torch.randn(2, 16_000 * 3, generator=g)
    lengths = torch.tensor([48_000, 30_000])
    fe = WhisperFeatureExtractor(feature_size=n_mels, chunk_length=30)
    ref = fe([wav[0].numpy(), wav[1, :30_000].numpy()], sampling_rate=16_000, return_tensors="np")[
        "input_features"
    ]
    ours = LogMel(n_mels, 3000)(wav, lengths).numpy()
    assert ours.shape == ref.shape == (2, n_mels, 3000)
    np.testing.assert_allclose(ours, ref, atol=2e-4, rtol=0)


def test_log_mel_pads_and_cuts_to_the_fixed_window():
    mel = LogMel(80, 300)
    assert mel(torch.zeros(1, 100)).shape == (1, 80, 300)
    assert mel(torch.randn(1, 60_000)).shape == (1, 80, 300)
