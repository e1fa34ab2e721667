"""Audio I/O: any soundfile-readable file to a 16 kHz mono float32 waveform.

Glossary: s  waveform samples (16 kHz), c  channels.

SALMONN's dataset takes channel 0 of multi-channel files, pads to at least 1 s and
cuts at 30 s (bytedance/SALMONN `dataset.py`); `load_audio` does the same and also
resamples to 16 kHz, which SALMONN assumed and never checked. `downmix="mean"`
averages the channels instead; the default stays "first" to match released teachers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf
import torch
import torchaudio.functional as AF
from torch import Tensor

from distill.contracts import SAMPLE_RATE
from distill.errors import DistillError

# SALMONN puts 1600 samples (0.1 s at 16 kHz) of silence between a clip and each of its
# "expand_wav" continuations.
EXPAND_GAP_SAMPLES = 1600
DOWNMIX_MODES = ("first", "mean")


class AudioError(DistillError, ValueError):
    """An audio file is missing, unreadable, empty or holds non-finite samples."""


@dataclass(frozen=True)
class AudioInfo:
    """Header facts of one audio file (read without decoding the samples)."""

    path: str
    frames: int
    sample_rate: int
    channels: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Read only the header of an audio file.

    Raises:
        AudioError: the file is missing, unreadable or has zero frames; names the file.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise AudioError(f"audio file not found: {path}")
    try:
        info = sf.info(path)
    except Exception as e:  # libsndfile raises several types for bad headers
        raise AudioError(f"unreadable audio file {path}: {e}") from e
    if info.frames <= 0:
        raise AudioError(f"audio file has zero length: {path}")
    return AudioInfo(path, int(info.frames), int(info.samplerate), int(info.channels))


def _read_mono(path: str, max_seconds: float | None, downmix: str) -> tuple[Tensor, int]:
    """Decode one file to a mono float32 tensor [s] at its native rate."""
    if not os.path.isfile(path):
        raise AudioError(f"audio file not found: {path}")
    try:
        with sf.SoundFile(path) as f:
            sr = int(f.samplerate)
            frames = f.frames
            if max_seconds is not None:
                frames = min(frames, int(round(max_seconds * sr)) + 1)
            data = f.read(frames, dtype="float32", always_2d=True)  # [s, c]
    except AudioError:
        raise
    except Exception as e:
        raise AudioError(f"unreadable audio file {path}: {e}") from e
    if data.shape[0] == 0:
        raise AudioError(f"audio file has zero length: {path}")
    x = torch.from_numpy(data)
    wave = x[:, 0] if downmix == "first" else x.mean(dim=1)
    if not bool(torch.isfinite(wave).all()):
        raise AudioError(f"audio file holds NaN or infinite samples: {path}")
    return wave.contiguous(), sr


def resample(wave: Tensor, orig_rate: int, new_rate: int = SAMPLE_RATE) -> Tensor:
    """Resample a waveform [s] (or [..., s]) with torchaudio's windowed sinc."""
    if orig_rate == new_rate:
        return wave
    return AF.resample(wave, orig_rate, new_rate)


def load_audio(
    path: str | os.PathLike,
    *,
    sample_rate: int = SAMPLE_RATE,
    min_seconds: float = 1.0,
    max_seconds: float | None = 30.0,
    downmix: str = "first",
    expand: Sequence[str | os.PathLike] = (),
) -> Tensor:
    """Load an audio file as SALMONN's data pipeline sees it.

    Args:
        path: wav, flac, ogg or anything libsndfile reads.
        sample_rate: output rate in Hz (16 kHz for every model here).
        min_seconds: zero-pad on the right to at least this long (SALMONN: 1 s).
        max_seconds: cut after this many seconds (SALMONN: 30 s); None keeps all.
        downmix: "first" takes channel 0 (SALMONN's choice); "mean" averages channels.
        expand: SALMONN's "expand_wav": files appended after 0.1 s of silence.

    Returns:
        [s] float32 mono waveform at `sample_rate`, min_seconds <= s / sample_rate <= max_seconds.

    Raises:
        AudioError: a file is missing, unreadable, has zero length or non-finite samples.
    """
    if downmix not in DOWNMIX_MODES:
        raise ValueError(f"downmix must be one of {DOWNMIX_MODES}, got {downmix!r}")
    parts = []
    for i, p in enumerate([path, *expand]):
        wave, sr = _read_mono(str(p), max_seconds, downmix)
        wave = resample(wave, sr, sample_rate)
        if i > 0:
            parts.append(wave.new_zeros(EXPAND_GAP_SAMPLES * sample_rate // SAMPLE_RATE))
        parts.append(wave)
    wave = torch.cat(parts) if len(parts) > 1 else parts[0]
    if max_seconds is not None:
        wave = wave[: int(round(max_seconds * sample_rate))]
    min_len = max(1, int(round(min_seconds * sample_rate)))
    if wave.shape[0] < min_len:
        wave = torch.nn.functional.pad(wave, (0, min_len - wave.shape[0]))
    return wave.to(torch.float32).contiguous()


def save_audio(path: str | os.PathLike, wave: Tensor, sample_rate: int = SAMPLE_RATE) -> None:
    """Write a mono waveform [s] in [-1, 1] as 16-bit PCM (format from the suffix)."""
    x = wave.detach().to(torch.float32).clamp(-1.0, 1.0).cpu().numpy()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, sample_rate, subtype="PCM_16")
