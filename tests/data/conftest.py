"""Shared fixtures for the data tests: tiny audio files and one small synthetic corpus."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf


def write_tone(
    path, seconds: float, sr: int = 16_000, channels: int = 1, freq: float = 440.0, fmt=None
):
    """A sine tone file; channel c has amplitude 0.5 / (c + 1) so channels are distinguishable."""
    t = np.arange(int(round(seconds * sr))) / sr
    x = np.stack([0.5 / (c + 1) * np.sin(2 * np.pi * freq * t) for c in range(channels)], axis=1)
    sf.write(str(path), x.astype(np.float32), sr, format=fmt)
    return str(path)


def write_json(path, doc) -> str:
    path.write_text(json.dumps(doc))
    return str(path)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    from distill.data.synth import make_corpus

    out = tmp_path_factory.mktemp("synth")
    files = make_corpus(out, seed=3, n_speech=40, n_sounds=20, workers=2)
    return out, files
