"""SALMONN checkpoints: key mapping, loud failures, safe loading, YAML configs."""

from __future__ import annotations

import pytest
import torch
import yaml

from distill._instantiate import ConfigError
from distill.modeling.checkpoint import CheckpointError
from distill.modeling.config import AudioLLMConfig
from distill.modeling.salmonn import (
    build_salmonn,
    critical_groups,
    load_salmonn_checkpoint,
    salmonn_checkpoint_keys,
    save_salmonn_checkpoint,
)
from distill.modeling.tiny import build_tiny

# Keys a released SALMONN checkpoint carries that our model does not have.
EXTRA_KEYS = {
    "speech_Qformer.bert.embeddings.position_ids": torch.arange(512)[None],
    "speech_Qformer.bert.embeddings.word_embeddings.weight": torch.zeros(30, 64),
    "speech_Qformer.bert.encoder.layer.0.intermediate.dense.weight": torch.zeros(128, 64),
    "speech_Qformer.bert.encoder.layer.1.output.LayerNorm.bias": torch.zeros(64),
    "speech_Qformer.cls.predictions.bias": torch.zeros(30),
}


def salmonn_state(model) -> dict[str, torch.Tensor]:
    """A state dict spelled as SALMONN saves it: trainable tensors plus unused BERT parts."""
    state = {k: v.detach().clone() for k, v in model.trainable_state_dict().items()}
    return {**state, **EXTRA_KEYS}


def _perturbed(model):
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05)
    return model


def test_salmonn_named_state_dict_loads(teacher, tokenizer_dirs, tmp_path):
    src = _perturbed(teacher)
    path = tmp_path / "salmonn.pth"
    torch.save(
        {
            "model": salmonn_state(src),
            "optimizer": {"state": {}},
            "epoch": 3,
            "config": {"run": {}},
        },
        path,
    )
    fresh = build_tiny("teacher", tokenizer_dirs["unigram"], seed=1)
    report = load_salmonn_checkpoint(fresh, path)
    assert sorted(report.ignored) == sorted(EXTRA_KEYS)
    for k, v in src.trainable_state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    assert report.not_in_checkpoint == []


def test_old_peft_lora_names_and_ddp_prefix_map(teacher, tokenizer_dirs, tmp_path):
    state = {
        "module." + k.replace(".default.weight", ".weight"): v
        for k, v in salmonn_state(_perturbed(teacher)).items()
    }
    torch.save({"model": state}, tmp_path / "old.pth")
    fresh = build_tiny("teacher", tokenizer_dirs["unigram"], seed=1)
    load_salmonn_checkpoint(fresh, tmp_path / "old.pth")
    key = "llama_model.base_model.model.model.layers.1.self_attn.v_proj.lora_B.default.weight"
    assert torch.equal(fresh.state_dict()[key], teacher.state_dict()[key])


def test_every_critical_key_is_required(teacher, tmp_path):
    groups = critical_groups(teacher)
    expected = {
        "speech_query_tokens",
        "ln_speech",
        "speech_llama_proj",
        "speech_Qformer.bert.embeddings.LayerNorm",
    }
    for i in range(2):
        expected |= {f"speech_Qformer.bert.encoder.layer.{i}.{p}" for p in
                     ("attention", "crossattention", "intermediate_query", "output_query")}  # fmt: skip
        expected |= {
            f"llama_model.base_model.model.model.layers.{i}.self_attn.{m}_proj.lora" for m in "qv"
        }
    assert set(groups) == expected
    full = salmonn_state(teacher)
    for prefix, keys in groups.items():
        for key in (keys[0], keys[-1]):
            state = {k: v for k, v in full.items() if k != key}
            torch.save({"model": state}, tmp_path / "ckpt.pth")
            with pytest.raises(CheckpointError) as err:
                load_salmonn_checkpoint(teacher, tmp_path / "ckpt.pth")
            assert prefix in str(err.value) and "missing critical" in str(err.value)


def test_all_missing_prefixes_are_listed_at_once(teacher, tmp_path):
    state = {
        k: v
        for k, v in salmonn_state(teacher).items()
        if not k.startswith(("ln_speech", "speech_llama_proj"))
    }
    torch.save({"model": state}, tmp_path / "ckpt.pth")
    with pytest.raises(
        CheckpointError, match=r"(?s)missing critical prefixes \(2\).*ln_speech.*speech_llama_proj"
    ):
        load_salmonn_checkpoint(teacher, tmp_path / "ckpt.pth")


def test_every_missing_key_is_listed_by_prefix_and_counted(teacher, tmp_path):
    gone = (
        "ln_speech",
        "speech_query_tokens",
        "speech_Qformer.bert.encoder.layer.1.crossattention.output",
    )
    lora = "llama_model.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"
    state = {
        k: v for k, v in salmonn_state(teacher).items() if not k.startswith(gone) and k != lora
    }
    torch.save({"model": state}, tmp_path / "ckpt.pth")
    with pytest.raises(CheckpointError) as err:
        load_salmonn_checkpoint(teacher, tmp_path / "ckpt.pth")
    cross = "speech_Qformer.bert.encoder.layer.1.crossattention"
    assert str(err.value) == (
        f"SALMONN checkpoint {str(tmp_path / 'ckpt.pth')!r} does not fit AudioLLM "
        "'tiny-teacher': missing critical prefixes (4): speech_query_tokens; "
        "ln_speech.* (2): ln_speech.weight, ln_speech.bias; "
        f"{cross}.* (4): {cross}.output.dense.weight, {cross}.output.dense.bias, "
        f"{cross}.output.LayerNorm.weight, {cross}.output.LayerNorm.bias; {lora}"
    )


def test_shape_mismatch_is_named(teacher, tmp_path):
    state = salmonn_state(teacher)
    state["speech_llama_proj.weight"] = torch.zeros(4096, 768)
    torch.save({"model": state}, tmp_path / "ckpt.pth")
    with pytest.raises(
        CheckpointError,
        match=r"speech_llama_proj.weight: checkpoint \(4096, 768\) vs model \(96, 64\)",
    ):
        load_salmonn_checkpoint(teacher, tmp_path / "ckpt.pth")


CALLED = []


def _side_effect():
    CALLED.append(True)
    return "ran"


class _Evil:
    def __reduce__(self):
        return (_side_effect, ())


def test_unsafe_pickle_is_refused_without_running_it(teacher, tmp_path):
    torch.save({"model": salmonn_state(teacher), "payload": _Evil()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_salmonn_checkpoint(teacher, tmp_path / "evil.pth")
    assert CALLED == []


def test_missing_checkpoint_file(teacher, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_salmonn_checkpoint(teacher, tmp_path / "nope.pth")


def test_checkpoint_keys_for_a_config_match_the_model(teacher):
    keys = salmonn_checkpoint_keys(teacher.config)
    state = teacher.state_dict()
    assert keys["speech_query_tokens"] == (1, 1, 64)
    assert keys["speech_Qformer.bert.encoder.layer.1.crossattention.self.key.weight"] == (64, 64)
    assert all(tuple(state[k].shape) == s for k, s in keys.items())
    assert set(keys) == {k for ks in critical_groups(teacher).values() for k in ks}


SALMONN_MODEL_BLOCK = {
    "llama_path": "LLM", "whisper_path": "WHISPER", "beats_path": "", "ckpt": "CKPT",
    "freeze_whisper": True, "freeze_beats": True, "use_speech_Qformer": True,
    "num_speech_query_token": 1, "window_level_Qformer": True, "second_per_window": 0.333333,
    "second_stride": 0.333333, "lora": True, "lora_rank": 8, "lora_alpha": 32, "lora_dropout": 0.1,
    "multi_prompt": True, "prompt_template": "USER: {}\nASSISTANT:", "prompt_path": "prompts/train_prompt.json",
    "test_prompt_path": "prompts/test_prompt.json", "max_txt_len": 300, "end_sym": "</s>",
}  # fmt: skip


def test_from_salmonn_yaml_maps_the_model_block(tmp_path):
    block = {**SALMONN_MODEL_BLOCK, "beats_path": "/ckpt/BEATs.pt", "freeze_beats": False}
    cfg = AudioLLMConfig.from_salmonn_yaml({"model": block, "run": {}})
    assert (cfg.llm_path, cfg.whisper_path, cfg.tokenizer_path) == ("LLM", "WHISPER", None)
    assert (cfg.audio_encoder, cfg.audio_encoder_path, cfg.freeze_audio_encoder) == (
        "beats",
        "/ckpt/BEATs.pt",
        False,
    )
    assert (cfg.lora_rank, cfg.lora_alpha, cfg.max_txt_len, cfg.end_sym) == (8, 32, 300, "</s>")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"model": SALMONN_MODEL_BLOCK}))
    assert AudioLLMConfig.from_salmonn_yaml(tmp_path / "c.yaml").audio_encoder is None
    with pytest.raises(ConfigError, match="lora_rnak"):
        AudioLLMConfig.from_salmonn_yaml({**SALMONN_MODEL_BLOCK, "lora_rnak": 8})
    with pytest.raises(ConfigError, match="window_level_Qformer"):
        AudioLLMConfig.from_salmonn_yaml({**SALMONN_MODEL_BLOCK, "window_level_Qformer": False})


def test_build_salmonn_from_local_paths(teacher, tokenizer_dirs, tmp_path, batch):
    """A SALMONN YAML pointing at local Whisper/LLM dirs and a .pth builds and loads."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoTokenizer,
        WhisperConfig,
        WhisperModel,
    )

    cfg = teacher.config
    WhisperModel(WhisperConfig(**cfg.whisper_config)).save_pretrained(tmp_path / "whisper")
    llm_kwargs = dict(cfg.llm_config)
    llm = AutoModelForCausalLM.from_config(
        AutoConfig.for_model(llm_kwargs.pop("model_type"), **llm_kwargs)
    )
    llm.save_pretrained(tmp_path / "llm")
    AutoTokenizer.from_pretrained(tokenizer_dirs["unigram"]).save_pretrained(tmp_path / "llm")
    save_salmonn_checkpoint(_perturbed(teacher), tmp_path / "salmonn.pth")
    block = {**SALMONN_MODEL_BLOCK, "llama_path": str(tmp_path / "llm"), "whisper_path": str(tmp_path / "whisper"),
             "ckpt": str(tmp_path / "salmonn.pth")}  # fmt: skip
    (tmp_path / "decode.yaml").write_text(yaml.safe_dump({"model": block}))
    model = build_salmonn(
        tmp_path / "decode.yaml", qformer_hidden=64, qformer_heads=4, qformer_ffn=128
    )
    state = model.state_dict()
    for k, v in teacher.trainable_state_dict().items():
        assert torch.equal(state[k], v), k
    key = "llama_model.base_model.model.model.layers.0.mlp.up_proj.weight"
    assert torch.equal(state[key], llm.state_dict()["model.layers.0.mlp.up_proj.weight"])
    assert not any(
        p.requires_grad for n, p in model.named_parameters() if n.startswith("speech_encoder.")
    )
    out = model(batch)
    assert torch.isfinite(out.logits).all()
    # the saved checkpoint dir of a path-built model stores no frozen weights
    model.save_pretrained(tmp_path / "ours")
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "ours" / "model.safetensors")
    assert not any(k.startswith("speech_encoder.") or "base_layer" in k for k in saved)


def test_audio_encoder_adds_ln_audio_to_critical_keys(tokenizer_dirs):
    pytest.importorskip("distill.modeling.audio_encoder")
    model = build_tiny("teacher", tokenizer_dirs["unigram"], audio_encoder="beats")
    groups = critical_groups(model)
    assert "ln_audio" in groups
    width = model.ln_speech.normalized_shape[0] + model.ln_audio.normalized_shape[0]
    assert model.speech_Qformer.bert.encoder.layer[0].crossattention.self.key.in_features == width
