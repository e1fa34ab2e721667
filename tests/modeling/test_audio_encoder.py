"""The audio-encoder factory: tiny builds, path-wins loading, widths, bundled configs, errors."""

from __future__ import annotations

import time

import pytest
import torch

from distill._instantiate import ConfigError
from distill.modeling.audio_encoder import (
    CheckpointError,
    audio_encoder_dim,
    build_audio_encoder,
    tiny_audio_encoder_config,
)
from distill.modeling.beats import save_beats
from distill.modeling.bundled import bundled_source, load_bundled_config


@pytest.mark.parametrize("kind", ["beats", "ced"])
def test_tiny_encoder_builds_and_runs_fast(kind):
    torch.manual_seed(0)
    start = time.perf_counter()
    model = build_audio_encoder(kind, tiny_audio_encoder_config(kind))
    assert time.perf_counter() - start < 1.0
    assert not model.training
    assert 100_000 < sum(p.numel() for p in model.parameters()) < 1_000_000
    waves = 0.1 * torch.randn(2, 3 * 16000, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(2, 3 * 16000, dtype=torch.bool)
    mask[1, 2 * 16000 :] = True
    with torch.no_grad():
        feats, pad = model.extract_features(waves, mask)
    d = audio_encoder_dim(kind, tiny_audio_encoder_config(kind))
    assert feats.shape == (2, model.num_tokens(3 * 16000), d) and pad.shape == feats.shape[:2]
    assert model.output_dim == d == feats.shape[-1]  # what AudioLLM sizes ln_audio with
    assert not pad[0].any() and pad[1].any() and torch.isfinite(feats).all()
    assert model.extract_features(waves[:, :16000])[1] is None


def test_path_wins_over_config(tmp_path):
    torch.manual_seed(0)
    model = build_audio_encoder("beats", tiny_audio_encoder_config("beats"))
    path = tmp_path / "beats.pt"
    save_beats(model, str(path))
    loaded = build_audio_encoder("beats", {"encoder_layers": 7}, path=str(path))
    assert loaded.cfg.encoder_layers == 2
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k

    ced = build_audio_encoder("ced", tiny_audio_encoder_config("ced"))
    torch.save(ced.state_dict(), tmp_path / "ced.pt")
    same = build_audio_encoder(
        "ced", tiny_audio_encoder_config("ced"), path=str(tmp_path / "ced.pt")
    )
    assert torch.equal(same.time_pos_embed, ced.time_pos_embed)
    with pytest.raises(CheckpointError, match=str(tmp_path / "ced.pt")):
        build_audio_encoder("ced", {"name": "ced-small"}, path=str(tmp_path / "ced.pt"))


def test_widths_of_real_configs():
    assert audio_encoder_dim("beats", None) == 768
    assert audio_encoder_dim("beats", load_bundled_config("encoders", "beats_iter3_plus")) == 768
    widths = {"ced_tiny": 192, "ced_mini": 256, "ced_small": 384, "ced_base": 768}
    for name, width in widths.items():
        assert audio_encoder_dim("ced", load_bundled_config("encoders", name)) == width
        assert "RicherMans/CED" in bundled_source("encoders", name)
    assert "unilm" in bundled_source("encoders", "beats_iter3_plus")


def test_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(ConfigError, match="'wav2vec'"):
        build_audio_encoder("wav2vec")
    with pytest.raises(CheckpointError, match="not found: .*nope.pt"):
        build_audio_encoder("beats", path=str(tmp_path / "nope.pt"))
    with pytest.raises(ConfigError, match="dims"):
        audio_encoder_dim("ced", {"dims": 3})
