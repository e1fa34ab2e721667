"""Bundled architecture configs and the named teacher/student presets (no weights, fast)."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from distill._instantiate import ConfigError
from distill.modeling.bundled import (
    bundled_names,
    bundled_source,
    end_symbol,
    load_bundled_config,
    with_hub_paths,
)
from distill.modeling.config import AudioLLMConfig
from students.presets import PRESETS as STUDENTS
from teachers.presets import PRESETS as TEACHERS

REAL_TEACHERS = ("salmonn-7b", "salmonn-13b", "nota-3b")
REAL_STUDENTS = (
    "qwen2.5-0.5b+whisper-v3-turbo+ced-small",
    "qwen2.5-1.5b+whisper-v3-turbo+ced-small",
    "llama-3.2-1b+whisper-small+beats",
)


def test_every_bundled_json_names_its_source_and_hub_id():
    for kind in ("whisper", "llm"):
        names = bundled_names(kind)
        assert len(names) >= 4, kind
        for name in names:
            text = resources.files("distill").joinpath("configs", kind, f"{name}.json").read_text()
            meta = json.loads(text)
            assert meta["_source"].startswith("https://huggingface.co/"), (kind, name)
            assert "/" in meta["_hub_id"], (kind, name)
            assert meta["model_type"] in ("whisper", "llama", "qwen2"), (kind, name)


def test_loader_strips_meta_normalises_names_and_names_known_files():
    by_hub = load_bundled_config("llm", "Qwen/Qwen2.5-0.5B-Instruct")
    assert by_hub == load_bundled_config("llm", "qwen2.5-0.5b-instruct")
    assert not any(k.startswith("_") for k in by_hub)
    assert by_hub["hidden_size"] == 896 and by_hub["num_key_value_heads"] == 2
    assert "huggingface.co" in bundled_source("whisper", "openai/whisper-large-v3-turbo")
    by_hub["hidden_size"] = 1  # a fresh dict each call
    assert load_bundled_config("llm", "qwen2.5-0.5b-instruct")["hidden_size"] == 896
    with pytest.raises(ConfigError, match="whisper-small"):
        load_bundled_config("whisper", "whisper-tiny")
    with pytest.raises(ConfigError, match="kind"):
        load_bundled_config("vision", "vit")


@pytest.mark.parametrize(
    ("name", "fields"),
    [
        ("whisper-large-v2", {"d_model": 1280, "encoder_layers": 32, "num_mel_bins": 80}),
        ("whisper-large-v3", {"num_mel_bins": 128, "vocab_size": 51866, "decoder_layers": 32}),
        (
            "whisper-large-v3-turbo",
            {"num_mel_bins": 128, "decoder_layers": 4, "encoder_layers": 32},
        ),
        ("whisper-small", {"d_model": 768, "encoder_layers": 12, "encoder_ffn_dim": 3072}),
    ],
)
def test_whisper_configs_match_the_public_cards(name, fields):
    cfg = load_bundled_config("whisper", name)
    assert {k: cfg[k] for k in fields} == fields
    assert cfg["max_source_positions"] == 1500  # 30 s -> 1500 frames


def test_llm_family_end_symbols():
    assert end_symbol("vicuna-7b-v1.5") == "</s>"
    assert end_symbol("meta-llama/Llama-3.2-3B-Instruct") == "<|end_of_text|>"
    assert end_symbol("Qwen2.5-0.5B-Instruct") == "<|im_end|>"
    with pytest.raises(ConfigError, match="end_sym"):
        end_symbol("mistral-7b")


def test_presets_are_registered_through_entry_points():
    from distill.presets import all_presets

    registered = all_presets()
    for name in (*REAL_TEACHERS, *REAL_STUDENTS, "tiny-teacher", "tiny-student"):
        assert name in registered, name
    assert not set(STUDENTS) & set(TEACHERS)


@pytest.mark.parametrize(
    ("name", "whisper_d", "mels", "enc", "llm_hidden", "end_sym", "targets"),
    [
        ("salmonn-7b", 1280, 80, "beats", 4096, "</s>", ("q_proj", "v_proj")),
        ("salmonn-13b", 1280, 80, "beats", 5120, "</s>", ("q_proj", "v_proj")),
        ("nota-3b", 1280, 80, "beats", 3072, "<|end_of_text|>", ("q_proj", "v_proj")),
        (
            "qwen2.5-0.5b+whisper-v3-turbo+ced-small",
            1280,
            128,
            "ced",
            896,
            "<|im_end|>",
            ("q_proj", "v_proj", "gate_proj"),
        ),
        (
            "llama-3.2-1b+whisper-small+beats",
            768,
            80,
            "beats",
            2048,
            "<|end_of_text|>",
            ("q_proj", "v_proj"),
        ),
    ],
)
def test_real_presets_describe_the_published_architectures(
    name, whisper_d, mels, enc, llm_hidden, end_sym, targets
):
    config = {**TEACHERS, **STUDENTS}[name]()
    assert isinstance(config, AudioLLMConfig) and config.name == name
    assert config.whisper_path is None and config.llm_path is None  # architecture only
    assert config.whisper_config["d_model"] == whisper_d
    assert config.whisper_config["num_mel_bins"] == mels
    assert config.audio_encoder == enc and config.audio_encoder_config
    assert config.llm_config["hidden_size"] == llm_hidden
    assert config.end_sym == end_sym and config.lora_targets == targets
    # SALMONN's bridge everywhere
    assert (config.qformer_hidden, config.qformer_layers, config.qformer_heads) == (768, 2, 12)
    assert (config.qformer_ffn, config.num_speech_query_token) == (3072, 1)
    assert (config.lora_rank, config.lora_alpha, config.lora_dropout) == (8, 32, 0.1)
    assert round(1500 * config.second_per_window / 30) == 17
    assert config.prompt_template == "USER: {}\nASSISTANT:"
    assert config.tokenizer_path == config.extra["hub"]["llm"]
    # a config round-trips through its dict (what config.json stores)
    assert AudioLLMConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_with_hub_paths_points_at_released_weights():
    config = with_hub_paths(TEACHERS["salmonn-13b"](), audio_encoder_path="/ckpt/beats.pt")
    assert config.whisper_path == "openai/whisper-large-v2" and config.whisper_config is None
    assert config.llm_path == "lmsys/vicuna-13b-v1.1" and config.llm_config is None
    assert config.audio_encoder_path == "/ckpt/beats.pt"
    assert config.resolved_tokenizer_path == config.llm_path


def test_tiny_presets_train_their_tokenizers_once_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_TINY_TOKENIZER_DIR", str(tmp_path))
    student, teacher = STUDENTS["tiny-student"](), TEACHERS["tiny-teacher"]()
    assert student.tokenizer_path == str(tmp_path / "bpe")
    assert teacher.tokenizer_path == str(tmp_path / "unigram")
    assert (student.end_sym, teacher.end_sym) == ("<|im_end|>", "</s>")
    assert (student.audio_encoder, teacher.audio_encoder) == ("ced", "beats")
    assert (student.llm_config["model_type"], teacher.llm_config["model_type"]) == (
        "qwen2",
        "llama",
    )
    tokenizer_file = tmp_path / "bpe" / "tokenizer.json"
    stamp = tokenizer_file.stat().st_mtime_ns
    assert STUDENTS["tiny-student"]().to_dict() == student.to_dict()
    assert tokenizer_file.stat().st_mtime_ns == stamp  # cached, not retrained
