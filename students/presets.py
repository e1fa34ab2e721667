"""Named student presets: zero-argument builders of `AudioLLMConfig`.

Registered under the `distill.presets` entry-point group, so `distill inspect NAME` and
recipe YAMLs find them without `distill` importing this package:

    from students.presets import PRESETS
    config = PRESETS["qwen2.5-0.5b+whisper-v3-turbo+ced-small"]()

The real-scale presets carry architecture configs only (bundled with `distill`, no weights):
they build on the meta device for inspection, or with random weights. To train from the
released weights, `distill.modeling.bundled.with_hub_paths(config, audio_encoder_path=...)`
swaps in the hub ids. All keep SALMONN's bridge: Q-Former 768 x 2 layers x 12 heads with
FFN 3072, 1 query per 17-frame window (88 audio tokens per 30 s), LoRA r 8 / alpha 32 /
dropout 0.1, prompt template "USER: {}\\nASSISTANT:" (the one NOTA's Llama-3.2 SALMONN
also keeps), and the end symbol of the LLM family.

The `tiny-*` presets build a 2-layer model in seconds with a tokenizer trained locally
(cached; see `distill.modeling.bundled.tiny_tokenizer_dir`).
"""

from __future__ import annotations

from collections.abc import Callable

from distill.modeling.bundled import bundled_audio_llm_config, tiny_tokenizer_dir
from distill.modeling.config import AudioLLMConfig


def qwen05b_whisper_turbo_ced_small() -> AudioLLMConfig:
    """The field's light student: whisper-large-v3-turbo encoder + CED-small + Qwen2.5-0.5B.

    LoRA on q, v and gate projections (the seed report's final student: WER 6.99 %,
    SPIDEr 0.3615, 3.83 GB). Q-Former encoder width 1280 + 384 = 1664.
    """
    return bundled_audio_llm_config(
        "qwen2.5-0.5b+whisper-v3-turbo+ced-small",
        whisper="whisper-large-v3-turbo",
        audio_encoder="ced",
        audio_encoder_config="ced_small",
        llm="qwen2.5-0.5b-instruct",
        lora_targets=("q_proj", "v_proj", "gate_proj"),
    )


def llama1b_whisper_small_beats() -> AudioLLMConfig:
    """A mid-size student: whisper-small encoder (768) + BEATs (768) + Llama-3.2-1B-Instruct.

    Same LLM family and tokenizer as NOTA's Llama-3.2-3B teacher, so logit distillation
    needs no cross-tokenizer alignment; LoRA on q and v as SALMONN.
    """
    return bundled_audio_llm_config(
        "llama-3.2-1b+whisper-small+beats",
        whisper="whisper-small",
        audio_encoder="beats",
        audio_encoder_config="beats_iter3_plus",
        llm="llama-3.2-1b-instruct",
    )


def qwen15b_whisper_turbo_ced_small() -> AudioLLMConfig:
    """A larger Qwen student: Qwen2.5-1.5B-Instruct with the light student's encoders."""
    return bundled_audio_llm_config(
        "qwen2.5-1.5b+whisper-v3-turbo+ced-small",
        whisper="whisper-large-v3-turbo",
        audio_encoder="ced",
        audio_encoder_config="ced_small",
        llm="qwen2.5-1.5b-instruct",
        lora_targets=("q_proj", "v_proj", "gate_proj"),
    )


# ------------------------------------------------------------------------- tiny
def tiny_student() -> AudioLLMConfig:
    """The offline demo's student: tiny Whisper + tiny CED + 2-layer Qwen2, byte-level BPE.

    Its tokenizer differs from `tiny-teacher`'s (unigram), as a real Qwen student's differs
    from a Vicuna teacher's, so cross-tokenizer losses are exercised offline.
    """
    from distill.modeling.tiny import tiny_config

    return tiny_config("student", tiny_tokenizer_dir("bpe"), audio_encoder="ced")


PRESETS: dict[str, Callable[[], AudioLLMConfig]] = {
    "qwen2.5-0.5b+whisper-v3-turbo+ced-small": qwen05b_whisper_turbo_ced_small,
    "qwen2.5-1.5b+whisper-v3-turbo+ced-small": qwen15b_whisper_turbo_ced_small,
    "llama-3.2-1b+whisper-small+beats": llama1b_whisper_small_beats,
    "tiny-student": tiny_student,
}
