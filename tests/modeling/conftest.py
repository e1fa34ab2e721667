"""Shared tiny fixtures: two locally trained tokenizers and tiny teacher/student models."""

from __future__ import annotations

import pytest
import torch

from distill.contracts import AudioBatch
from distill.modeling.tiny import build_tiny
from distill.modeling.tokenizers import train_tiny_tokenizer

ASR = "Recognize the speech and give me the transcription."


@pytest.fixture(scope="session")
def tokenizer_dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tokenizers")
    return {flavor: train_tiny_tokenizer(root / flavor, flavor) for flavor in ("bpe", "unigram")}


@pytest.fixture
def student(tokenizer_dirs):
    return build_tiny("student", tokenizer_dirs["bpe"], seed=0)


@pytest.fixture
def teacher(tokenizer_dirs):
    return build_tiny("teacher", tokenizer_dirs["unigram"], seed=0)


def make_batch(
    answers=("the dog barks", "a cat"), lengths=(48_000, 20_000), seed: int = 0
) -> AudioBatch:
    """Seeded noise clips (zero past each length) with ASR prompts."""
    g = torch.Generator().manual_seed(seed)
    s = max(lengths)
    wav = 0.1 * torch.randn(len(lengths), s, generator=g)
    lens = torch.tensor(lengths)
    wav = wav * (torch.arange(s)[None, :] < lens[:, None])
    n = len(lengths)
    return AudioBatch(
        waveforms=wav,
        lengths=lens,
        tasks=["asr"] * n,
        prompts=[ASR] * n,
        answers=list(answers),
        ids=[f"item{i}" for i in range(n)],
    )


@pytest.fixture
def batch() -> AudioBatch:
    return make_batch()
