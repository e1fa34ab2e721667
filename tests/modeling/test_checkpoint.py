"""Our own checkpoint format: bit-exact round trip, self-contained dir, clear errors."""

from __future__ import annotations

import json
import os

import pytest
import torch

from distill.modeling.audio_llm import AudioLLM
from distill.modeling.checkpoint import CheckpointError, checkpoint_state, load_weights


def _perturb(model) -> None:
    """Move trainable weights away from their init so a reload that re-inits would show."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("trainable_only", [True, False])
def test_round_trip_is_bit_exact(student, batch, tmp_path, trainable_only):
    _perturb(student)
    student.eval()
    before = student(batch).logits
    student.save_pretrained(tmp_path / "ckpt", trainable_only=trainable_only)
    assert sorted(os.listdir(tmp_path / "ckpt")) == [
        "config.json",
        "model.safetensors",
        "tokenizer",
    ]
    loaded = AudioLLM.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.config.tokenizer_path == str(tmp_path / "ckpt" / "tokenizer")
    a, b = student.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert torch.equal(before, loaded(batch).logits)
    assert loaded.tokenizer_info.fingerprint == student.tokenizer_info.fingerprint


def test_trainable_only_skips_frozen_parts_that_have_a_path(student):
    # Random-init parts cannot be rebuilt, so they are saved; pretend Whisper has a path.
    assert any(k.startswith("speech_encoder.") for k in checkpoint_state(student))
    student.config.whisper_path = "/somewhere/whisper"
    keys = checkpoint_state(student)
    assert not any(k.startswith("speech_encoder.") for k in keys)
    assert "speech_query_tokens" in keys and any("lora_A" in k for k in keys)


def test_save_is_atomic_and_overwrites(student, tmp_path):
    student.save_pretrained(tmp_path)
    student.save_pretrained(tmp_path)  # second save replaces files and the tokenizer dir
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors", "tokenizer"]
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["format"] == "distill.audio_llm" and meta["config"]["name"] == "tiny-student"


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        AudioLLM.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        AudioLLM.from_pretrained(tmp_path / "empty")


def test_checkpoint_of_other_architecture_names_keys(student, teacher, tmp_path):
    teacher.save_pretrained(tmp_path / "teacher")
    with pytest.raises(CheckpointError) as err:
        load_weights(student, tmp_path / "teacher" / "model.safetensors")
    msg = str(err.value)
    assert (
        "shape mismatches" in msg
        and "lm_head.weight: checkpoint (384, 96) vs model (512, 64)" in msg
    )
    assert (
        "missing keys" in msg and "layers.0.self_attn.k_proj.bias" in msg
    )  # Qwen2 has q/k/v biases
    assert "tiny-student" in msg
