"""BEATs: config parsing, checkpoint layout and loading, token counts, padding, sizes."""

from __future__ import annotations

import math

import pytest
import torch

from distill._instantiate import ConfigError
from distill.modeling.audio_encoder import CheckpointError, tiny_audio_encoder_config
from distill.modeling.beats import (
    BEATs,
    BEATsConfig,
    WeightNormConv1d,
    load_beats,
    relative_position_bucket,
    save_beats,
)
from distill.modeling.bundled import load_bundled_config


def _tiny(seed: int = 0, **overrides) -> BEATs:
    torch.manual_seed(seed)
    return BEATs(BEATsConfig.from_dict({**tiny_audio_encoder_config("beats"), **overrides})).eval()


def _noise(b: int, s: int, seed: int = 1) -> torch.Tensor:
    return 0.1 * torch.randn(b, s, generator=torch.Generator().manual_seed(seed))


def test_config_keeps_unknown_keys_and_rejects_wrong_types():
    cfg = BEATsConfig.from_dict({"encoder_layers": 2, "some_future_key": 3, "dropout": 0})
    assert cfg.encoder_layers == 2 and cfg.dropout == 0.0
    assert cfg.extra == {"some_future_key": 3}
    assert cfg.to_dict()["some_future_key"] == 3
    assert BEATsConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="encoder_layers"):
        BEATsConfig.from_dict({"encoder_layers": "12"})
    with pytest.raises(ConfigError, match="deep_norm"):
        BEATsConfig.from_dict({"deep_norm": 1})
    with pytest.raises(ConfigError, match="divisible"):
        BEATsConfig.from_dict({"encoder_embed_dim": 100, "encoder_attention_heads": 12})


def test_weight_norm_matches_torch_legacy_weight_norm():
    torch.manual_seed(0)
    ours = WeightNormConv1d(channels=8, kernel=6, groups=2)
    ref = torch.nn.utils.weight_norm(
        torch.nn.Conv1d(8, 8, 6, padding=3, groups=2), name="weight", dim=2
    )
    assert {k: tuple(v.shape) for k, v in ref.state_dict().items()} == {
        k: tuple(v.shape) for k, v in ours.state_dict().items()
    }
    ref.load_state_dict({k: v * 1.5 + 0.1 for k, v in ours.state_dict().items()})
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 8, 20)
    torch.testing.assert_close(ours(x), ref(x))


def test_checkpoint_keys_are_the_original_names():
    keys = set(_tiny().state_dict())
    assert {
        "encoder.pos_conv.0.weight_g",
        "encoder.pos_conv.0.weight_v",
        "encoder.pos_conv.0.bias",
    } <= keys
    for i in range(2):  # the shared bias table appears under every layer, as in the original
        p = f"encoder.layers.{i}."
        names = ("k_proj.weight", "q_proj.bias", "out_proj.weight", "grep_linear.weight", "grep_a")
        assert {p + "self_attn." + n for n in names} <= keys
        assert p + "self_attn.relative_attention_bias.weight" in keys
        assert {
            p + "self_attn_layer_norm.weight",
            p + "fc1.weight",
            p + "fc2.bias",
            p + "final_layer_norm.bias",
        } <= keys
    assert {
        "patch_embedding.weight",
        "layer_norm.weight",
        "post_extract_proj.weight",
        "encoder.layer_norm.bias",
    } <= keys
    assert "predictor.weight" in set(_tiny(finetuned_model=True, predictor_class=5).state_dict())


def test_round_trip_through_file_gives_identical_outputs(tmp_path):
    model = _tiny(seed=3, finetuned_model=True, predictor_class=5)
    path = tmp_path / "beats.pt"
    save_beats(model, str(path))
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) == {"cfg", "model"} and ckpt["cfg"]["encoder_layers"] == 2
    loaded = load_beats(str(path)).eval()
    x = _noise(2, 32000)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.extract_features(x)[0], model.extract_features(x)[0], rtol=0, atol=0
        )
    torch.testing.assert_close(loaded.predictor.weight, model.predictor.weight, rtol=0, atol=0)


def test_wrong_architecture_fails_naming_keys_and_file(tmp_path):
    model = _tiny()
    path = tmp_path / "other.pt"
    state = model.state_dict()
    cfg = model.cfg.to_dict() | {"encoder_ffn_embed_dim": 64}
    torch.save({"cfg": cfg, "model": state}, path)
    with pytest.raises(CheckpointError, match=r"encoder\.layers\.0\.fc1\.weight") as err:
        load_beats(str(path))
    assert str(path) in str(err.value)
    state.pop("encoder.pos_conv.0.weight_g")
    torch.save({"cfg": model.cfg.to_dict(), "model": state}, path)
    with pytest.raises(CheckpointError, match=r"missing keys: encoder\.pos_conv\.0\.weight_g"):
        load_beats(str(path))
    torch.save({"weights": state}, path)
    with pytest.raises(CheckpointError, match="'cfg' and 'model'"):
        load_beats(str(path))


def test_token_count_formula():
    with torch.device("meta"):
        real = BEATs(BEATsConfig.from_dict(load_bundled_config("encoders", "beats_iter3_plus")))
    # 30 s: 1 + (480000 - 400) // 160 = 2998 frames -> 187 time patches x 8 mel patches
    assert real.num_tokens(30 * 16000) == 1496
    assert real.num_tokens(10 * 16000) == (1 + (160000 - 400) // 160) // 16 * 8 == 496
    tiny = _tiny()
    for s in (2800, 16000, 27999, 48000):
        with torch.no_grad():
            feats, _ = tiny.extract_features(_noise(1, s))
        assert feats.shape == (1, tiny.num_tokens(s), 96)


def test_padding_a_batch_item_keeps_its_valid_features():
    model = _tiny(seed=5)
    short, long = 33_000, 48_000
    x = _noise(2, long)
    x[0, short:] = 0.0
    mask = torch.arange(long)[None, :] >= torch.tensor([[short], [long]])
    with torch.no_grad():
        batched, pad = model.extract_features(x, mask)
        alone, alone_pad = model.extract_features(
            x[:1, :short], torch.zeros(1, short, dtype=torch.bool)
        )
    n = model.num_tokens(short)
    assert pad.shape == (2, model.num_tokens(long)) and not alone_pad.any() and not pad[1].any()
    assert pad[0, :n].logical_not().all() and pad[0, n:].all()
    torch.testing.assert_close(batched[0, :n], alone[0], rtol=1e-4, atol=1e-4)


def test_original_mask_mode_differs_by_at_most_one_time_patch():
    model = _tiny()
    s, frames = 48_000, 1 + (48_000 - 400) // 160
    for length in (20_000, 33_000, 40_100):
        mask = (torch.arange(s) >= length)[None]
        exact = model.token_padding_mask(mask, frames)
        orig = model.token_padding_mask(mask, frames, mode="original")
        assert exact.shape == orig.shape
        assert (exact != orig).sum() <= 8  # 8 mel patches per time patch


def test_relative_position_buckets():
    rel = torch.tensor([-3, 0, 3, 79, 80, 799, 800, 5000, -5000])
    got = relative_position_bucket(rel, num_buckets=320, max_distance=800).tolist()
    large = lambda d: 80 + int(math.log(d / 80) / math.log(800 / 80) * 80)  # noqa: E731
    assert got == [3, 0, 163, 239, 240, 160 + large(799), 319, 319, 159]


def test_real_config_parameter_count_matches_public_figure():
    cfg = load_bundled_config("encoders", "beats_iter3_plus")
    with torch.device("meta"):
        model = BEATs(BEATsConfig.from_dict(cfg))
        encoder_only = BEATs(BEATsConfig.from_dict(cfg | {"finetuned_model": False}))
    total = sum(p.numel() for p in model.parameters())
    assert total == 90_717_055  # 90.3 M encoder + 0.4 M AudioSet predictor
    assert abs(total / 90e6 - 1) < 0.01
    assert abs(sum(p.numel() for p in encoder_only.parameters()) / 90e6 - 1) < 0.01
