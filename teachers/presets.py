"""Named teacher presets: zero-argument builders of `AudioLLMConfig`.

Registered under the `distill.presets` entry-point group (next to the student presets).
Each describes a released SALMONN-style teacher's architecture with bundled configs and no
weights; `distill.modeling.bundled.with_hub_paths(config, audio_encoder_path=BEATS_PT)`
points it at the released Whisper and LLM, and the SALMONN checkpoint (`ckpt`) supplies the
Q-Former, projection and LoRA weights. `trainable` counts of these configs are exactly what
a SALMONN checkpoint stores (Q-Former, projection, LoRA, the two LayerNorms).

    from teachers.presets import PRESETS
    config = PRESETS["salmonn-7b"]()

Sources:
    salmonn-7b / salmonn-13b: bytedance/SALMONN README and configs (whisper-large-v2,
        BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2, vicuna-7b-v1.5 / vicuna-13b-v1.1,
        end_sym "</s>").
    nota-3b: nota-github/audiolm-evaluator `salmonn_eval_config.yaml`: llama_path
        meta-llama/Llama-3.2-3B-Instruct, whisper_path openai/whisper-large-v2, the same
        BEATs iter3+ AS2M cpt2 checkpoint, end_sym "<|end_of_text|>", LoRA 8/32/0.1.
"""

from __future__ import annotations

from collections.abc import Callable

from distill.modeling.bundled import bundled_audio_llm_config, tiny_tokenizer_dir
from distill.modeling.config import AudioLLMConfig

BEATS = "beats_iter3_plus"


def salmonn_7b() -> AudioLLMConfig:
    """SALMONN-7B: whisper-large-v2 + BEATs iter3+ + Vicuna-7B v1.5 (LoRA q,v)."""
    return bundled_audio_llm_config(
        "salmonn-7b",
        whisper="whisper-large-v2",
        audio_encoder="beats",
        audio_encoder_config=BEATS,
        llm="vicuna-7b-v1.5",
    )


def salmonn_13b() -> AudioLLMConfig:
    """SALMONN-13B (v1): whisper-large-v2 + BEATs iter3+ + Vicuna-13B v1.1 (LoRA q,v)."""
    return bundled_audio_llm_config(
        "salmonn-13b",
        whisper="whisper-large-v2",
        audio_encoder="beats",
        audio_encoder_config=BEATS,
        llm="vicuna-13b-v1.1",
    )


def nota_3b() -> AudioLLMConfig:
    """NOTA's SALMONN-3B: whisper-large-v2 + BEATs iter3+ + Llama-3.2-3B-Instruct (LoRA q,v)."""
    return bundled_audio_llm_config(
        "nota-3b",
        whisper="whisper-large-v2",
        audio_encoder="beats",
        audio_encoder_config=BEATS,
        llm="llama-3.2-3b-instruct",
    )


def tiny_teacher() -> AudioLLMConfig:
    """The offline demo's teacher: tiny Whisper + tiny BEATs + 2-layer Llama, unigram tokenizer."""
    from distill.modeling.tiny import tiny_config

    return tiny_config("teacher", tiny_tokenizer_dir("unigram"), audio_encoder="beats")


PRESETS: dict[str, Callable[[], AudioLLMConfig]] = {
    "salmonn-7b": salmonn_7b,
    "salmonn-13b": salmonn_13b,
    "nota-3b": nota_3b,
    "tiny-teacher": tiny_teacher,
}
