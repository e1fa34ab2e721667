from __future__ import annotations

import pytest
import torch

from distill.data.audio import AudioError, audio_info, load_audio

from .conftest import write_tone


def test_resamples_to_16k_and_keeps_duration(tmp_path):
    path = write_tone(tmp_path / "a.wav", 2.0, sr=22050)
    wave = load_audio(path)
    assert wave.dtype == torch.float32 and wave.ndim == 1
    assert abs(wave.shape[0] - 32000) <= 1
    # a 440 Hz tone stays a 440 Hz tone: the spectrum peaks at bin 440 of a 1 Hz grid
    spec = torch.fft.rfft(wave[:16000]).abs()
    assert int(spec.argmax()) == 440


def test_pads_short_clips_to_one_second(tmp_path):
    wave = load_audio(write_tone(tmp_path / "short.flac", 0.25))
    assert wave.shape[0] == 16000
    assert wave[4000:].abs().max() == 0 and wave[:4000].abs().max() > 0.4


def test_cuts_at_max_seconds(tmp_path):
    path = write_tone(tmp_path / "long.ogg", 3.5, sr=8000, fmt="OGG")
    assert load_audio(path).shape[0] == 3.5 * 16000
    assert load_audio(path, max_seconds=2.0).shape[0] == 32000


def test_takes_channel_zero_or_mean(tmp_path):
    path = write_tone(tmp_path / "stereo.wav", 1.0, channels=2)
    first = load_audio(path)
    mean = load_audio(path, downmix="mean")
    # channel 0 has amplitude 0.5, channel 1 0.25: the mean has 0.375
    torch.testing.assert_close(first.abs().max(), torch.tensor(0.5), atol=2e-3, rtol=0)
    torch.testing.assert_close(mean.abs().max(), torch.tensor(0.375), atol=2e-3, rtol=0)


def test_expand_wav_appends_after_gap(tmp_path):
    a = write_tone(tmp_path / "a.wav", 1.0)
    b = write_tone(tmp_path / "b.wav", 0.5)
    wave = load_audio(a, expand=[b])
    assert wave.shape[0] == 16000 + 1600 + 8000
    assert wave[16000:17600].abs().max() == 0


def test_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.wav"
    with pytest.raises(AudioError, match="missing.wav"):
        load_audio(missing)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF0000WAVEfmt garbage" * 10)
    with pytest.raises(AudioError, match="corrupt.wav"):
        load_audio(corrupt)
    with pytest.raises(AudioError, match="corrupt.wav"):
        audio_info(corrupt)
    empty = write_tone(tmp_path / "empty.wav", 0.0)
    with pytest.raises(AudioError, match="zero length.*empty.wav"):
        load_audio(empty)
    with pytest.raises(AudioError, match="empty.wav"):
        audio_info(empty)


def test_audio_info_reads_header(tmp_path):
    info = audio_info(write_tone(tmp_path / "x.flac", 1.5, sr=22050, channels=2))
    assert (info.frames, info.sample_rate, info.channels) == (33075, 22050, 2)
    assert info.duration == pytest.approx(1.5)
