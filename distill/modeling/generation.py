"""Text generation for an `AudioLLM` through Hugging Face `generate`.

The prompt (BOS, instruction text, spliced audio tokens) is left-padded and handed
over as `inputs_embeds` + `attention_mask`. Decoding stops at any of the model's
`stop_ids` (end_sym, eos and the family's end tokens, see `prompt.stop_token_ids`).
The returned strings are cut at the first stop id (or end_sym text) and stripped.

`DecodeSettings` says how to decode; `DECODE_PRESETS` names two:

- "greedy": 1 beam, 64 new tokens, min_length 1 (quick evaluation of tiny runs);
- "salmonn": SALMONN's `configs/decode_config.yaml` (`generate:` block): 4 beams,
  200 new tokens, min_length 1, repetition and length penalty 1.0, do_sample False,
  temperature 1.0, top_p 0.9.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, get_type_hints

import torch

from distill._instantiate import ConfigError
from distill.contracts import AudioBatch


def _check(cond: bool, name: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"DecodeSettings.{name} {msg}")


@dataclass(frozen=True)
class DecodeSettings:
    """How to decode answers (the `GenerationConfig` fields SALMONN sets)."""

    num_beams: int = 1  # 1 is greedy; SALMONN uses 4 (slower by about the beam count)
    max_new_tokens: int = 64  # cap on generated tokens; SALMONN 200
    # generated tokens before an end id may appear: 1 (SALMONN) masks the end ids at the first
    # step, so an answer is never empty; 0 lets a model that ends at once answer ""
    min_length: int = 1
    repetition_penalty: float = 1.0  # > 1 discourages repeats; 1.0 (SALMONN) is off
    length_penalty: float = 1.0  # beam score = log-prob / length**penalty; beams only
    do_sample: bool = False  # SALMONN decodes deterministically
    temperature: float = 1.0  # sampling only
    top_p: float = 1.0  # sampling only; SALMONN passes 0.9, which its beam search ignores

    def __post_init__(self) -> None:
        _check(self.num_beams >= 1, "num_beams", f"must be >= 1, got {self.num_beams}")
        _check(
            self.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1, got {self.max_new_tokens}"
        )
        _check(
            0 <= self.min_length <= self.max_new_tokens,
            "min_length",
            f"must be in [0, max_new_tokens={self.max_new_tokens}], got {self.min_length}",
        )
        for name in ("repetition_penalty", "temperature"):
            _check(getattr(self, name) > 0, name, f"must be > 0, got {getattr(self, name)}")
        _check(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def generation_kwargs(self) -> dict[str, Any]:
        """`GenerationConfig` kwargs.

        min_length becomes `min_new_tokens`: with `inputs_embeds`, recent transformers
        subtract the embedded prompt from `min_length`, which makes SALMONN's 1 a no-op.
        Temperature and top_p are passed only when sampling (HF ignores them otherwise).
        """
        kw = {
            "num_beams": self.num_beams,
            "max_new_tokens": self.max_new_tokens,
            "min_new_tokens": self.min_length,
            "repetition_penalty": self.repetition_penalty,
            "length_penalty": self.length_penalty,
            "do_sample": self.do_sample,
        }
        if self.do_sample:
            kw.update(temperature=self.temperature, top_p=self.top_p)
        return kw


DECODE_PRESETS = {
    "greedy": DecodeSettings(),
    "salmonn": DecodeSettings(num_beams=4, max_new_tokens=200, min_length=1, top_p=0.9),
}


def decode_settings(
    preset: str | DecodeSettings = "greedy", where: str = "decode", **overrides: Any
) -> DecodeSettings:
    """A preset (by name) with some fields changed; None values keep the preset's.

    Args:
        preset: a `DECODE_PRESETS` name or a `DecodeSettings`.
        where: the config path named in errors (e.g. "eval" or "eval.teacher_decode").
        **overrides: `DecodeSettings` fields (YAML strings such as "1e0" are converted).

    Raises:
        ConfigError: an unknown preset or field, or a value out of range, named by `where`.
    """
    from distill._coerce import coerce

    if isinstance(preset, str):
        if preset not in DECODE_PRESETS:
            raise ConfigError(
                f"{where}.decode must be one of {sorted(DECODE_PRESETS)}, got {preset!r}"
            )
        preset = DECODE_PRESETS[preset]
    hints = get_type_hints(DecodeSettings)
    unknown = sorted(set(overrides) - set(hints))
    if unknown:
        raise ConfigError(
            f"unknown decode setting(s) {', '.join(f'{where}.{k}' for k in unknown)}; "
            f"valid: {', '.join(hints)}"
        )
    changes = {
        k: coerce(v, hints[k], f"{where}.{k}") for k, v in overrides.items() if v is not None
    }
    try:
        return dataclasses.replace(preset, **changes)
    except ConfigError as err:
        raise ConfigError(str(err).replace("DecodeSettings.", f"{where}.")) from None


def generate_ids(model, batch: AudioBatch, decode: DecodeSettings | None = None) -> torch.Tensor:
    """The generated token ids [b, n] (new tokens only; rows that stop early are padded).

    Args:
        model: an `AudioLLM`.
        batch: the batch (answers are ignored).
        decode: the settings; None is the "greedy" preset.
    """
    from transformers import GenerationConfig

    decode = decode or DECODE_PRESETS["greedy"]
    tok = model.tokenizer
    stop = model.stop_ids
    pad = tok.pad_token_id if tok.pad_token_id is not None else (stop[0] if stop else 0)
    gen_cfg = GenerationConfig(
        eos_token_id=stop or None,
        pad_token_id=pad,
        bos_token_id=tok.bos_token_id,
        **decode.generation_kwargs(),
    )
    was_training = model.training
    model.eval()
    try:
        inp = model.prepare_inputs(batch, with_answer=False)
        return model.llama_model.generate(
            inputs_embeds=inp["inputs_embeds"],
            attention_mask=inp["attention_mask"],
            generation_config=gen_cfg,
        )
    finally:
        model.train(was_training)


def generate_text(
    model, batch: AudioBatch, decode: DecodeSettings | str | None = None, **overrides: Any
) -> list[str]:
    """Greedy (num_beams=1) or beam-search answers for a batch.

    Args:
        model: an `AudioLLM`.
        batch: the batch (answers are ignored).
        decode: the settings or a preset name; None is the "greedy" preset.
        **overrides: `DecodeSettings` fields to change (e.g. num_beams=4, min_length=0).

    Returns:
        b answer strings.
    """
    decode = decode_settings(decode or "greedy", **overrides)
    out = generate_ids(model, batch, decode)
    stop = model.stop_ids
    return [_clean(model.tokenizer, row.tolist(), stop, model.config.end_sym) for row in out]


def _clean(tok, ids: list[int], stop: list[int], end_sym: str) -> str:
    """Cut at the first stop id (or end_sym text), drop specials, strip spaces."""
    for i, t in enumerate(ids):
        if t in stop:
            ids = ids[:i]
            break
    text = tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return text.split(end_sym)[0].strip()
