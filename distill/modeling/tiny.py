"""Tiny AudioLLM configs that build offline in well under a second.

`tiny_config("teacher")` is a 2-layer Llama with the unigram tokenizer (end_sym `</s>`);
`tiny_config("student")` a 2-layer Qwen2 with the byte-level BPE tokenizer
(`<|im_end|>`). Both use a 2-layer Whisper encoder (d=64, 80 mels, 3 s fixed window
-> 150 frames -> 8 windows of 17 frames) and a 2-layer Q-Former of width 64.
"""

from __future__ import annotations

import os

import torch

from distill.modeling.config import AudioLLMConfig
from distill.modeling.tokenizers import train_tiny_tokenizer

__all__ = ["tiny_config", "build_tiny", "tiny_whisper_config", "train_tiny_tokenizer"]


def tiny_whisper_config(
    d: int = 64, layers: int = 2, seconds: float = 3.0, n_mels: int = 80
) -> dict:
    """WhisperConfig kwargs for a small encoder with a `seconds`-long fixed input window."""
    positions = int(round(seconds * 50))
    return {
        "d_model": d,
        "encoder_layers": layers,
        "encoder_attention_heads": max(1, d // 32),
        "encoder_ffn_dim": 2 * d,
        "num_mel_bins": n_mels,
        "max_source_positions": positions,
        "decoder_layers": 1,
        "decoder_attention_heads": 1,
        "decoder_ffn_dim": 8,
        "max_target_positions": 8,
        "vocab_size": 8,  # the decoder is never used; keep its special ids inside the vocab
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "decoder_start_token_id": 1,
    }


def _llm_config(kind: str, vocab: int, tok) -> dict:
    common = {
        "vocab_size": vocab,
        "num_hidden_layers": 2,
        "max_position_embeddings": 512,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "rope_theta": 10000.0,
    }
    if kind == "student":
        return {
            "model_type": "qwen2",
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "tie_word_embeddings": True,
            **common,
        }
    return {
        "model_type": "llama",
        "hidden_size": 96,
        "intermediate_size": 192,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "tie_word_embeddings": False,
        **common,
    }


def tiny_config(
    kind: str = "student",
    tokenizer_dir: str | os.PathLike | None = None,
    audio_encoder: str | None = None,
    **overrides,
) -> AudioLLMConfig:
    """A tiny `AudioLLMConfig`.

    Args:
        kind: "teacher" (Llama, d=96) or "student" (Qwen2, d=64).
        tokenizer_dir: a tokenizer dir (e.g. from `train_tiny_tokenizer`); the LLM vocab
            is its size and end_sym its eos token.
        audio_encoder: None, "beats" or "ced" (tiny config from `audio_encoder.py`).
        **overrides: any `AudioLLMConfig` field.
    """
    from transformers import AutoTokenizer

    if kind not in ("teacher", "student"):
        raise ValueError(f"tiny_config kind must be 'teacher' or 'student', got {kind!r}")
    if tokenizer_dir is None:
        raise ValueError("tiny_config needs tokenizer_dir (see train_tiny_tokenizer)")
    tok_dir = os.fspath(tokenizer_dir)
    tok = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    fields = {
        "name": f"tiny-{kind}",
        "whisper_config": tiny_whisper_config(),
        "qformer_hidden": 64,
        "qformer_layers": 2,
        "qformer_heads": 4,
        "qformer_ffn": 128,
        "llm_config": _llm_config(kind, len(tok), tok),
        "tokenizer_path": tok_dir,
        "end_sym": tok.eos_token,
        "max_txt_len": 64,
    }
    if audio_encoder is not None:
        from distill.modeling.audio_encoder import tiny_audio_encoder_config

        fields.update(
            audio_encoder=audio_encoder,
            audio_encoder_config=tiny_audio_encoder_config(audio_encoder),
        )
    fields.update(overrides)
    return AudioLLMConfig.from_dict(fields)


def build_tiny(
    kind: str = "student",
    tokenizer_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    device=None,
    **overrides,
):
    """`AudioLLM(tiny_config(...))`, seeded so two builds are identical."""
    from distill.modeling.audio_llm import AudioLLM

    cfg = tiny_config(kind, tokenizer_dir, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AudioLLM(cfg, device=device)
