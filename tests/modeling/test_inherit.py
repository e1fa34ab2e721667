"""Weight inheritance: a student starts parts of itself from a teacher's trained weights."""

from __future__ import annotations

import pytest
import torch

from distill.modeling.checkpoint import CheckpointError, inherit_weights
from distill.modeling.tiny import build_tiny

PARTS = ["speech_Qformer", "speech_query_tokens", "ln_speech", "ln_audio"]  # the demo's


def _perturb(model, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))


def _ced_student(tokenizer_dirs, seed: int, **kw):
    return build_tiny("student", tokenizer_dirs["bpe"], seed=seed, audio_encoder="ced", **kw)


def test_inherited_parts_equal_the_source_and_nothing_else_moves(tokenizer_dirs, tmp_path):
    student = _ced_student(tokenizer_dirs, 0)
    _perturb(student)
    student.save_pretrained(tmp_path / "src")
    other = _ced_student(tokenizer_dirs, 3)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    counts = inherit_weights(other, tmp_path / "src", PARTS)
    src, now = student.state_dict(), other.state_dict()
    assert counts["speech_query_tokens"] == 1 and counts["speech_Qformer"] > 10
    copied = [k for k in now if any(k == p or k.startswith(p + ".") for p in PARTS)]
    assert sum(counts.values()) == len([k for k in copied if k in src])
    for k in now:
        if k in copied:
            assert torch.equal(now[k], src[k]), k
        else:  # projection, LoRA, frozen encoders and LM: the student's own init
            assert torch.equal(now[k], before[k]), k
    # the copy is a real parameter write: the module computes with it
    assert torch.equal(other.speech_query_tokens, student.speech_query_tokens)
    assert any(not torch.equal(before[k], now[k]) for k in copied)


def test_a_narrower_or_other_encoder_student_is_refused_by_key(tokenizer_dirs, tmp_path):
    _ced_student(tokenizer_dirs, 0).save_pretrained(tmp_path / "src")
    narrow = _ced_student(tokenizer_dirs, 0, qformer_hidden=32, qformer_ffn=64)
    with pytest.raises(CheckpointError, match=r"shape mismatches: speech_Qformer\.") as err:
        inherit_weights(narrow, tmp_path / "src", PARTS)
    assert str(tmp_path / "src") in str(err.value)
    # no audio encoder: the cross-attention reads a narrower encoder_width, and ln_audio is gone
    speech_only = build_tiny("student", tokenizer_dirs["bpe"], seed=0)
    before = {k: v.clone() for k, v in speech_only.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"crossattention.*unexpected keys: ln_audio"):
        inherit_weights(speech_only, tmp_path / "src", PARTS)
    after = speech_only.state_dict()  # a refusal copies nothing, not even the parts that fit
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_part_the_source_lacks_is_refused_naming_its_parts(student, tmp_path):
    # the tiny speech-only student has no ln_audio: the error lists what the source holds
    student.save_pretrained(tmp_path / "src")
    with pytest.raises(CheckpointError, match=r"'speech_llama_projx'.*speech_Qformer"):
        inherit_weights(student, tmp_path / "src", ["speech_llama_projx"])
    with pytest.raises(CheckpointError, match=r"'ln_audio'.*\(its parts: .*ln_speech"):
        inherit_weights(student, tmp_path / "src", PARTS)
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        inherit_weights(student, tmp_path / "nowhere", PARTS)


def test_build_model_inherits_and_checks_its_node(tokenizer_dirs, tmp_path):
    from distill._instantiate import ConfigError
    from distill.modeling.tiny import tiny_config
    from distill.presets import build_model

    source = _ced_student(tokenizer_dirs, 0)
    _perturb(source)
    source.save_pretrained(tmp_path / "src")
    config = tiny_config("student", tokenizer_dirs["bpe"], audio_encoder="ced").to_dict()
    model = build_model(config=config, seed=5, inherit={"from": str(tmp_path / "src"),
                                                       "parts": PARTS})  # fmt: skip
    assert torch.equal(model.speech_query_tokens, source.speech_query_tokens)
    assert not torch.equal(model.speech_llama_proj.weight, source.speech_llama_proj.weight)
    with pytest.raises(ConfigError, match="'from'.*'parts'"):
        build_model(config=config, inherit={"path": str(tmp_path / "src")})
