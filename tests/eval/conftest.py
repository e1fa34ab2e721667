"""Shared fixtures: a tiny AudioLLM (2-layer Whisper / Q-Former / Qwen2) and a few wav clips."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory) -> str:
    from distill.modeling.tiny import train_tiny_tokenizer

    return train_tiny_tokenizer(str(tmp_path_factory.mktemp("tok") / "bpe"), flavor="bpe")


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    from distill.modeling.tiny import build_tiny

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores on the dev box; keep timings stable
    yield build_tiny("student", tiny_tokenizer, seed=0).eval()
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def test_set(tmp_path_factory) -> str:
    """Four clips (2 ASR, 2 captioning with several references) as the field's test file."""
    from distill.data.audio import save_audio

    root = tmp_path_factory.mktemp("testset")
    g = torch.Generator().manual_seed(0)
    rows = []
    for i, (task, refs) in enumerate(
        [
            ("asr", ["hello world"]),
            ("asr", ["the colour grey"]),
            ("audiocaption_v2", ["a dog barks", "barking dog"]),
            ("audiocaption_v2", ["rain on a roof", "rain falls"]),
        ]
    ):
        save_audio(root / f"clip{i}.wav", 0.1 * torch.randn(16000 + 4000 * i, generator=g))
        rows.append(
            {"testset_id": f"test{i:04d}", "path": f"clip{i}.wav", "task": task, "references": refs}
        )
    path = root / "test.json"
    path.write_text(json.dumps(rows))
    return str(path)
