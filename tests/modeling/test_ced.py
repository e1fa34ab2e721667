"""CED: both checkpoint layouts, strict errors, token order and counts, padding, sizes."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange
from safetensors.torch import save_file

from distill._instantiate import ConfigError
from distill.modeling.audio_encoder import CheckpointError, tiny_audio_encoder_config
from distill.modeling.bundled import load_bundled_config
from distill.modeling.ced import CED, CEDConfig, freq_to_time_major, load_ced


def _tiny(seed: int = 0, **overrides) -> CED:
    torch.manual_seed(seed)
    model = CED(CEDConfig.from_dict({**tiny_audio_encoder_config("ced"), **overrides}))
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a key mix-up would show
        bn = model.init_bn[1]
        bn.running_mean.uniform_(-60, -20)
        bn.running_var.uniform_(50, 200)
        bn.weight.uniform_(0.5, 1.5)
    return model.eval()


def _noise(b: int, s: int, seed: int = 1) -> torch.Tensor:
    return 0.1 * torch.randn(b, s, generator=torch.Generator().manual_seed(seed))


def _hf_layout(state: dict) -> dict:
    """What HF `mispeech/ced-*` stores: encoder. prefix, init_bn.1 -> init_bn, no front end."""
    out = {}
    for key, value in state.items():
        if key.startswith("front_end."):
            continue
        if not key.startswith("outputlayer"):
            key = "encoder." + key.replace("init_bn.1.", "init_bn.")
        out[key] = value.clone()
    return out


def test_both_layouts_load_strictly_and_agree(tmp_path):
    model = _tiny(seed=2)
    flat = model.state_dict()
    assert {"init_bn.1.running_var", "front_end.0.mel_scale.fb", "patch_embed.proj.weight"} <= set(
        flat
    )
    assert {
        "time_pos_embed",
        "freq_pos_embed",
        "blocks.1.attn.qkv.weight",
        "outputlayer.1.bias",
    } <= set(flat)
    torch.save(flat, tmp_path / "orig.pt")
    save_file(_hf_layout(flat), str(tmp_path / "model.safetensors"))
    x = _noise(2, 24_000)
    with torch.no_grad():
        want = model.extract_features(x)[0]
        for name in ("orig.pt", "model.safetensors"):
            loaded = load_ced(str(tmp_path / name), model.cfg).eval()
            torch.testing.assert_close(loaded.extract_features(x)[0], want, rtol=0, atol=0)
            torch.testing.assert_close(loaded.predict(x), model.predict(x), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="width 96 is not a public size"):
        load_ced(str(tmp_path / "model.safetensors"))  # heads cannot be read off the weights


def test_public_size_is_inferred_from_the_weights(tmp_path):
    torch.manual_seed(0)
    model = CED(CEDConfig.from_dict({"name": "ced-tiny", "depth": 1, "outputdim": 3})).eval()
    save_file(_hf_layout(model.state_dict()), str(tmp_path / "model.safetensors"))
    loaded = load_ced(str(tmp_path / "model.safetensors")).eval()
    assert (loaded.cfg.embed_dim, loaded.cfg.num_heads, loaded.cfg.depth) == (192, 3, 1)
    x = _noise(1, 16_000)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.extract_features(x)[0], model.extract_features(x)[0], rtol=0, atol=0
        )


def test_wrong_architecture_fails_naming_keys_and_file(tmp_path):
    path = tmp_path / "ced.pt"
    torch.save(_tiny().state_dict(), path)
    with pytest.raises(
        CheckpointError,
        match=r"33 shape mismatches: blocks\.0\.attn\.proj\.bias: checkpoint \(96,\) vs model \(192,\)",
    ) as err:
        load_ced(str(path), CEDConfig.from_dict({"name": "ced-tiny", "depth": 2, "outputdim": 8}))
    assert str(path) in str(err.value)
    with pytest.raises(CheckpointError, match=r"missing keys: blocks\.2\."):
        load_ced(str(path), CEDConfig(embed_dim=96, num_heads=4, depth=3, outputdim=8))
    state = _tiny().state_dict()
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"unexpected keys: extra\.weight"):
        load_ced(str(path), _tiny().cfg)


def test_tokens_are_time_major_permutation_of_frequency_major():
    f, t, d = 4, 5, 3
    grid = torch.stack(
        torch.meshgrid(torch.arange(f), torch.arange(t), indexing="ij"), -1
    )  # [f, t, 2]
    x = rearrange(grid, "f t k -> 1 (f t) k").expand(-1, -1, d - 1)
    x = torch.cat([x, torch.zeros(1, f * t, 1, dtype=x.dtype)], -1)
    y = freq_to_time_major(x, f)
    assert [tuple(r[:2]) for r in y[0].tolist()] == [(fi, ti) for ti in range(t) for fi in range(f)]
    model = _tiny(seed=4)
    wave = _noise(1, 20_000)
    with torch.no_grad():
        ours = model.extract_features(wave)[0]
        spec = model.init_bn[1](model.spectrogram(wave).unsqueeze(2)).squeeze(2)
        original = model.forward_features(spec.unsqueeze(1))  # the original (f t) order
    assert ours.shape == original.shape
    torch.testing.assert_close(ours, freq_to_time_major(original, model.n_freq))
    assert not torch.equal(ours, original)


def test_token_counts():
    with torch.device("meta"):
        base = CED(CEDConfig.from_dict(load_bundled_config("encoders", "ced_base")))
    # 30 s: 3001 centred frames -> 3 chunks of 1012 (last zero-padded) x 63 time x 4 mel patches
    assert base.num_tokens(30 * 16000) == 3 * 63 * 4 == 756
    assert base.num_tokens(10 * 16000) == 1001 // 16 * 4 == 248  # the CED paper's 248 for 10 s
    tiny = _tiny()
    for s in (2_600, 48_000, 161_600, 200_000):
        with torch.no_grad():
            feats, _ = tiny.extract_features(_noise(1, s))
        assert feats.shape == (1, tiny.num_tokens(s), 96)


@pytest.mark.parametrize(("short", "long"), [(37_000, 48_000), (190_000, 240_000)])
def test_padding_a_batch_item_keeps_its_valid_features(short, long):
    model = _tiny(seed=6, single_clip_as_original=False)  # the batched (masked) mode alone too
    x = _noise(2, long)
    x[0, short:] = 0.0
    mask = torch.arange(long)[None, :] >= torch.tensor([[short], [long]])
    with torch.no_grad():
        batched, pad = model.extract_features(x, mask)
        alone, alone_pad = model.extract_features(
            x[:1, :short], torch.zeros(1, short, dtype=torch.bool)
        )
    n = alone.shape[1]
    assert pad.shape == batched.shape[:2] and torch.isfinite(batched).all()
    assert torch.equal(pad[0, :n], alone_pad[0]) and pad[0, n:].all()
    valid = ~alone_pad[0]
    # valid = time patches whose 16 frames have windows inside the signal: frame i is clean iff
    # 160 i + 256 <= short; chunk k's patch j ends at frame 1012 k + 16 (j + 1)
    clean = (short - 256) // 160 + 1
    patches = sum(min(63, max(0, (clean - 1012 * k) // 16)) for k in range(n // (63 * 4) or 1))
    assert valid.sum() == 4 * min(patches, n // 4)
    torch.testing.assert_close(batched[0, :n][valid], alone[0][valid], rtol=1e-4, atol=1e-4)


def _original_tokens(model: CED, wave: torch.Tensor) -> torch.Tensor:
    """The original CED at batch 1, by hand: split the normalised spectrogram into chunks of
    target_length frames, zero-pad the last, run the blocks unmasked, concatenate time-major."""
    spec = model.spectrogram(wave)  # [1, c, m]
    spec = model.init_bn[1](spec.unsqueeze(2)).squeeze(2)
    target = model.cfg.target_length
    splits = list(spec.split(target, dim=-1))
    if spec.shape[-1] > target and splits[-1].shape[-1] < target:
        splits[-1] = torch.nn.functional.pad(splits[-1], (0, target - splits[-1].shape[-1]))
    outs = [
        freq_to_time_major(model.forward_features(c.unsqueeze(1)), model.n_freq) for c in splits
    ]
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("samples", [24_000, 190_000, 330_000])  # 1, 2 and 3 chunks
def test_single_clip_matches_the_original_chunked_unmasked_computation(samples):
    model = _tiny(seed=7)
    x = _noise(1, samples, seed=3)
    no_padding = torch.zeros(1, samples, dtype=torch.bool)
    with torch.no_grad():
        want = _original_tokens(model, x)
        got, pad = model.extract_features(x, no_padding)
        masked, masked_pad = _tiny(seed=7, single_clip_as_original=False).extract_features(
            x, no_padding
        )
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if samples > 161_600:  # a zero-padded last chunk: the batched mode hides its tail
        assert pad is None and masked_pad.any()
        assert not torch.allclose(masked, want, atol=1e-3)
    else:  # one chunk, nothing padded: both modes are the original
        torch.testing.assert_close(masked, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("frames", [3001, 512])  # a longer table (sliced), a shorter (resized)
def test_checkpoint_with_another_position_table_loads_and_runs(tmp_path, frames, caplog):
    src = _tiny(seed=8, target_length=frames)
    torch.save(src.state_dict(), tmp_path / "ced.pt")
    model = _tiny(seed=9)  # target_length 1012: 63 time positions
    with caplog.at_level("WARNING"):
        loaded = load_ced(str(tmp_path / "ced.pt"), model.cfg).eval()
    assert "time_pos_embed" in caplog.text
    table, theirs = loaded.time_pos_embed, src.time_pos_embed
    assert table.shape[-1] == 1012 // 16 and theirs.shape[-1] == frames // 16
    if frames > 1012:
        assert torch.equal(table, theirs[..., :63])  # the first positions, as the original
    else:
        want = torch.nn.functional.interpolate(theirs, size=(1, 63), mode="bilinear")
        torch.testing.assert_close(table, want)
    assert torch.equal(loaded.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)
    with torch.no_grad():
        out, _ = loaded.extract_features(_noise(1, 200_000))
    assert torch.isfinite(out).all()


def test_front_end_matches_torchaudio_at_batch_size_one():
    import torchaudio

    model = _tiny()
    ref = torch.nn.Sequential(
        torchaudio.transforms.MelSpectrogram(
            sample_rate=16000,
            n_fft=512,
            win_length=512,
            hop_length=160,
            f_min=0,
            f_max=8000,
            n_mels=64,
        ),
        torchaudio.transforms.AmplitudeToDB(top_db=120),
    )
    wave = _noise(1, 16_000)
    wave[:, 4000:] = 0.0  # silence hits the top_db floor
    torch.testing.assert_close(model.spectrogram(wave), ref(wave), rtol=1e-5, atol=1e-3)
    assert torch.equal(model.front_end[0].mel_scale.fb, ref[0].mel_scale.fb)


def test_items_do_not_share_the_decibel_floor():
    model = _tiny(seed=7)
    quiet = _noise(1, 16_000) * 1e-4
    quiet[:, 8000:] = 0.0  # silence would sit at the floor; a louder batch mate must not move it
    loud = _noise(1, 16_000, seed=9) * 100
    with torch.no_grad():
        alone = model.extract_features(quiet)[0]
        together = model.extract_features(torch.cat([quiet, loud]))[0][:1]
    torch.testing.assert_close(together, alone)


def test_config_names_and_errors():
    assert CEDConfig.from_dict({"name": "ced-small"}).embed_dim == 384
    assert CEDConfig.from_dict({"name": "mispeech/ced-mini"}).num_heads == 4
    with pytest.raises(ConfigError, match="embed_dims"):
        CEDConfig.from_dict({"embed_dims": 3})
    with pytest.raises(ConfigError, match="depth"):
        CEDConfig.from_dict({"depth": 2.0})
    with pytest.raises(ConfigError, match="size name"):
        CEDConfig.from_dict({"name": "ced-huge"})


# Exact counts of the original architecture (encoder + AudioSet head) and the README's figures.
# The README rounds (5.5 / 9.6 / 22 / 86 M): mini and small differ by 1.0 % and 1.7 %.
SIZES = {
    "tiny": (5_503_183, 5.5e6),
    "mini": (9_696_655, 9.6e6),
    "small": (21_622_543, 22e6),
    "base": (85_711_759, 86e6),
}


@pytest.mark.parametrize("size", sorted(SIZES))
def test_real_config_parameter_counts(size):
    exact, public = SIZES[size]
    with torch.device("meta"):
        model = CED(CEDConfig.from_dict(load_bundled_config("encoders", f"ced_{size}")))
    total = sum(p.numel() for p in model.parameters())
    assert total == exact
    assert abs(total / public - 1) < 0.02
    assert round(total / 1e6, 1 if public < 10e6 else 0) == pytest.approx(public / 1e6, abs=0.11)
