"""`distill inspect`: real-scale parameter counts, memory and checkpoint keys on the meta device.

Nothing is downloaded; every model is built from bundled configs with meta tensors.
Public figures: Qwen2.5-0.5B 0.49 B (494 M), Llama-3.2-3B 3.21 B, Vicuna-7B 6.74 B,
Whisper large encoder ~635 M, BEATs 90 M, CED 5.5 / 9.6 / 22 / 86 M (REFERENCE.md, model cards).
"""

from __future__ import annotations

import json

import pytest
import torch

from distill.cli import main as cli_main
from distill.inspect import DTYPE_BYTES, part_of, summarize
from distill.modeling.bundled import load_bundled_config
from students.presets import PRESETS as STUDENTS
from teachers.presets import PRESETS as TEACHERS

STUDENT = "qwen2.5-0.5b+whisper-v3-turbo+ced-small"


def _within(value: float, target: float, rel: float = 0.01) -> bool:
    return abs(value - target) <= rel * target


def _n(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def teacher():
    return summarize("salmonn-7b", TEACHERS["salmonn-7b"](), keys=True)


@pytest.fixture(scope="module")
def student():
    return summarize(STUDENT, STUDENTS[STUDENT](), keys=True)


# ---------------------------------------------------------------- components alone
@pytest.mark.parametrize(
    ("name", "public"),
    [
        ("qwen2.5-0.5b-instruct", 494e6),
        ("llama-3.2-3b-instruct", 3.21e9),
        ("vicuna-7b-v1.5", 6.74e9),
        ("llama-3.2-1b-instruct", 1.24e9),
        ("vicuna-13b-v1.1", 13.0e9),
    ],
)
def test_bundled_llm_sizes_match_public_figures(name, public):
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = load_bundled_config("llm", name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**kwargs))
    assert _within(_n(model), public), (name, _n(model))


@pytest.mark.parametrize(("name", "public"), [("whisper-large-v3", 635e6), ("whisper-small", 88e6)])
def test_bundled_whisper_encoder_sizes(name, public):
    from transformers import WhisperConfig, WhisperModel

    with torch.device("meta"):
        encoder = WhisperModel(WhisperConfig(**load_bundled_config("whisper", name))).encoder
    assert _within(_n(encoder), public), (name, _n(encoder))


@pytest.mark.parametrize(
    ("name", "kind", "public", "rel"),
    [
        ("beats_iter3_plus", "beats", 90e6, 0.01),
        # CED cards round to two digits (5.5 / 9.6 / 22 / 86 M), hence 2 %
        ("ced_tiny", "ced", 5.5e6, 0.02),
        ("ced_mini", "ced", 9.6e6, 0.02),
        ("ced_small", "ced", 22e6, 0.02),
        ("ced_base", "ced", 86e6, 0.02),
    ],
)
def test_bundled_audio_encoder_sizes(name, kind, public, rel):
    from distill.modeling.audio_encoder import build_audio_encoder

    with torch.device("meta"):
        encoder = build_audio_encoder(kind, load_bundled_config("encoders", name))
    assert _within(_n(encoder), public, rel), (name, _n(encoder))


# ---------------------------------------------------------------- whole models
def test_salmonn_7b_parts(teacher):
    parts = teacher.parts
    assert _within(parts["speech encoder"].total, 635e6)
    assert _within(parts["audio encoder"].total, 90e6)
    assert _within(parts["LLM"].total, 6.74e9)
    assert parts["speech encoder"].trainable == 2 * 1280  # only ln_speech
    assert parts["audio encoder"].trainable == 2 * 768  # only ln_audio
    assert parts["LLM"].trainable == 0
    assert parts["LoRA"].total == parts["LoRA"].trainable == 32 * 2 * (8 * 4096 + 4096 * 8)
    assert parts["projection"].total == 768 * 4096 + 4096
    assert teacher.kv_bytes_per_token("bfloat16") == 2 * 32 * 32 * 128 * 2  # 512 KiB
    assert teacher.audio_tokens == 88
    weights = teacher.to_dict()["weight_bytes"]
    assert weights["float32"] == 4 * teacher.total and weights["bfloat16"] == weights["float16"]


def test_light_student_parts(student):
    parts = student.parts
    assert _within(parts["LLM"].total, 494e6)
    assert _within(parts["audio encoder"].total, 22e6, rel=0.02)
    assert _within(parts["speech encoder"].total, 635e6)
    assert parts["projection"].total == 768 * 896 + 896
    # LoRA on q (896->896), v (896->128, 2 kv heads x 64) and gate (896->4864), 24 layers
    per_layer = 8 * (896 + 896) + 8 * (896 + 128) + 8 * (896 + 4864)
    assert parts["LoRA"].trainable == 24 * per_layer
    assert student.kv_bytes_per_token("bfloat16") == 2 * 24 * 2 * 64 * 2
    assert student.audio_tokens == 88


def salmonn_7b_reference_layout() -> dict[str, tuple[int, ...]]:
    """SALMONN-7B checkpoint parameters, written from REFERENCE.md's names and widths."""
    h, ffn, width, d_llm, r = 768, 3072, 1280 + 768, 4096, 8
    keys: dict[str, tuple[int, ...]] = {"speech_query_tokens": (1, 1, h)}

    def linear(prefix: str, n_out: int, n_in: int) -> None:
        keys[f"{prefix}.weight"], keys[f"{prefix}.bias"] = (n_out, n_in), (n_out,)

    def norm(prefix: str, n: int) -> None:
        keys[f"{prefix}.weight"], keys[f"{prefix}.bias"] = (n,), (n,)

    norm("ln_speech", 1280)
    norm("ln_audio", 768)
    norm("speech_Qformer.bert.embeddings.LayerNorm", h)
    for i in range(2):
        layer = f"speech_Qformer.bert.encoder.layer.{i}"
        for name in ("query", "key", "value"):
            linear(f"{layer}.attention.self.{name}", h, h)
        linear(f"{layer}.crossattention.self.query", h, h)
        linear(f"{layer}.crossattention.self.key", h, width)
        linear(f"{layer}.crossattention.self.value", h, width)
        for att in ("attention", "crossattention"):
            linear(f"{layer}.{att}.output.dense", h, h)
            norm(f"{layer}.{att}.output.LayerNorm", h)
        linear(f"{layer}.intermediate_query.dense", ffn, h)
        linear(f"{layer}.output_query.dense", h, ffn)
        norm(f"{layer}.output_query.LayerNorm", h)
    linear("speech_llama_proj", d_llm, h)
    for i in range(32):
        for proj in ("q_proj", "v_proj"):
            base = f"llama_model.base_model.model.model.layers.{i}.self_attn.{proj}"
            keys[f"{base}.lora_A.default.weight"] = (r, d_llm)
            keys[f"{base}.lora_B.default.weight"] = (d_llm, r)
    return keys


def test_salmonn_7b_checkpoint_keys_match_the_reference_layout(teacher):
    listed = {k: shape for k, shape, _ in teacher.keys}
    expected = salmonn_7b_reference_layout()
    assert sorted(set(expected) - set(listed)) == []
    # anything else listed must be a buffer (released checkpoints carry buffers too)
    extra = sorted(set(listed) - set(expected))
    assert all("lora_" not in k and not k.endswith((".weight", ".bias")) for k in extra), extra
    assert {k: listed[k] for k in expected} == expected
    assert teacher.trainable == sum(torch.Size(s).numel() for s in expected.values())


@pytest.mark.parametrize(
    ("preset", "released_bytes"), [("salmonn-13b", 400_466_533), ("salmonn-7b", 363e6)]
)
def test_trainable_counts_explain_the_released_checkpoint_sizes(teacher, preset, released_bytes):
    # a released .pth holds fp32 weights plus AdamW's two moments: 12 bytes per trainable param
    summary = teacher if preset == "salmonn-7b" else summarize(preset, TEACHERS[preset]())
    assert _within(3 * DTYPE_BYTES["float32"] * summary.trainable, released_bytes, rel=0.005)


def test_part_names_follow_salmonn_attributes():
    assert (
        part_of(
            "llama_model.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"
        )
        == "LoRA"
    )
    assert part_of("llama_model.base_model.model.lm_head.weight") == "LLM"
    assert part_of("speech_query_tokens") == "Q-Former"
    assert part_of("ln_audio.weight") == "audio encoder"


# ---------------------------------------------------------------- CLI
def test_cli_compare_prints_side_by_side_ratios(capsys):
    assert cli_main(["inspect", "salmonn-7b", "--compare", STUDENT]) == 0
    out = capsys.readouterr().out
    assert "ratio" in out and "KV cache / token bf16" in out
    kv_row = next(line for line in out.splitlines() if line.startswith("KV cache / token bf16"))
    assert kv_row.split()[-1] == f"{(2 * 32 * 32 * 128) / (2 * 24 * 2 * 64):.1f}x"  # 42.7x


def test_cli_json_with_keys(capsys):
    assert cli_main(["inspect", "nota-3b", "--json", "--keys"]) == 0
    data = json.loads(capsys.readouterr().out)
    (model,) = data["models"]
    assert model["name"] == "nota-3b" and model["audio_tokens_per_30s"] == 88
    assert _within(model["parts"]["LLM"]["total"], 3.21e9)
    assert model["kv_cache_bytes_per_token"]["bfloat16"] == 2 * 28 * 8 * 128 * 2
    lora = [k for k in model["keys"] if "lora_A" in k["key"]]
    assert len(lora) == 28 * 2 and lora[0]["shape"] == [8, 3072]


NOTA_YAML = """\
model:
  llama_path: "meta-llama/Llama-3.2-3B-Instruct"
  whisper_path: "openai/whisper-large-v2"
  beats_path: "/not/here/BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt"
  ckpt: "/not/here/llama_stage2_ckpt.pth"
  freeze_whisper: True
  freeze_beats: True
  use_speech_Qformer: True
  window_level_Qformer: True
  num_speech_query_token: 1
  second_per_window: 0.333333
  second_stride: 0.333333
  lora: True
  lora_rank: 8
  lora_alpha: 32
  lora_dropout: 0.1
  multi_prompt: True
  prompt_template: "USER: {}\\nASSISTANT:"
  max_txt_len: 300
  end_sym: "<|end_of_text|>"
"""


def test_a_salmonn_yaml_is_inspected_offline_like_its_preset(tmp_path, capsys):
    # NOTA's released eval config (nota-github/audiolm-evaluator) names hub ids and local files
    path = tmp_path / "salmonn_eval_config.yaml"
    path.write_text(NOTA_YAML)
    assert cli_main(["inspect", str(path), "--json"]) == 0
    from_yaml = json.loads(capsys.readouterr().out)["models"][0]
    assert cli_main(["inspect", "nota-3b", "--json"]) == 0
    from_preset = json.loads(capsys.readouterr().out)["models"][0]
    assert from_yaml["parts"] == from_preset["parts"]
    assert from_yaml["kv_cache_bytes_per_token"] == from_preset["kv_cache_bytes_per_token"]


def test_a_config_json_and_the_tiny_presets_resolve(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DISTILL_TINY_TOKENIZER_DIR", str(tmp_path / "tok"))
    config = STUDENTS["tiny-student"]()
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(config.to_dict()))
    assert cli_main(["inspect", str(tmp_path / "model"), "--compare", "tiny-teacher"]) == 0
    out = capsys.readouterr().out
    assert "tiny-teacher" in out and "ratio" in out
    summary = summarize("tiny", config)
    assert summary.parts["LLM"].total < 2e6 and summary.trainable > 0


def test_an_unknown_name_is_a_clean_error_listing_the_presets(capsys):
    assert cli_main(["inspect", "salmonn-70b"]) == 2
    err = capsys.readouterr().err
    assert "salmonn-70b" in err and "salmonn-7b" in err and "Traceback" not in err


def test_placement_memory_per_gpu(teacher, student, capsys):
    """Replicated: the teacher whole on every GPU; sharded: everything / N plus one gathered
    teacher decoder layer. Closed forms from the parameter counts."""
    from distill.inspect import placement_memory

    rep, shard = placement_memory(teacher, student, 4)
    assert rep["teacher_weights"] == 2 * teacher.total
    assert rep["student_weights"] == 4 * student.total
    assert rep["student_grads_and_adam"] == 12 * student.trainable
    layer = 2 * teacher.parts["LLM"].total // teacher.llm["layers"]
    assert shard["teacher_weights"] == 2 * teacher.total / 4 + layer
    assert shard["student_weights"] == rep["student_weights"] / 4
    assert shard["total"] == pytest.approx(sum(shard[k] for k in (
        "teacher_weights", "student_weights", "student_grads_and_adam")))  # fmt: skip
    one_rep, one_shard = placement_memory(teacher, student, 1)
    assert one_rep["total"] == one_shard["total"]  # nothing to shard over on one GPU
    assert 13.5 * 1024**3 < rep["teacher_weights"] < 15 * 1024**3  # ~7 B params in bf16
    assert cli_main(["inspect", "salmonn-7b", "--compare", STUDENT, "--gpus", "2"]) == 0
    out = capsys.readouterr().out
    assert "replicated x 2" in out and "sharded x 2" in out and "fits 24 / 40 / 80 GiB" in out
