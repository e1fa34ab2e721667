"""`AudioLLMConfig`: everything needed to build one SALMONN-style audio LLM.

A config is plain data. It round-trips through `to_dict`/`from_dict` (that is
what `config.json` of a saved model holds) and can be read from a SALMONN
training YAML with `from_salmonn_yaml`. Weights come either from paths
(`whisper_path`, `audio_encoder_path`, `llm_path`) or from random initialisation
of the given `*_config` dicts (tiny test models).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from distill._instantiate import ConfigError

_DTYPES = ("float32", "float16", "bfloat16")
_AUDIO_ENCODERS = (None, "beats", "ced")

# SALMONN `model:` keys that describe things this config does not hold (data files,
# training-time prompt sampling, the checkpoint to load). `build_salmonn` reads `ckpt`.
SALMONN_IGNORED_KEYS = frozenset(
    {
        "ckpt",
        "multi_prompt",
        "prompt_path",
        "test_prompt_path",
        "use_speech_Qformer",
        "window_level_Qformer",
        "freeze_speech_QFormer",
        "speech_llama_proj_model",
        "freeze_speech_llama_proj",
        "low_resource",
        "device_8bit",
        "token",
        "only_preprocessor",
    }
)


@dataclass
class AudioLLMConfig:
    """Configuration of an `AudioLLM` (Whisper [+ BEATs/CED] -> window Q-Former -> LLM).

    Field names follow SALMONN where SALMONN has one. Defaults are SALMONN's.
    """

    name: str = "audio-llm"
    # --- speech encoder: HF Whisper encoder. A path loads weights; a dict builds random ones.
    whisper_path: str | None = None
    whisper_config: dict | None = None  # kwargs for transformers.WhisperConfig
    freeze_whisper: bool = True  # SALMONN freezes it; unfreezing costs ~600M trainable params
    # --- non-speech audio encoder; its module attribute is `beats` (SALMONN's name) for both kinds
    audio_encoder: str | None = None  # "beats", "ced" or None
    audio_encoder_path: str | None = None  # BEATs {"cfg","model"} .pt, or a CED checkpoint
    audio_encoder_config: dict | None = None
    freeze_audio_encoder: bool = True
    # --- window-level Q-Former (bert-base sized in SALMONN, 2 layers)
    qformer_hidden: int = 768
    qformer_layers: int = 2
    qformer_heads: int = 12
    qformer_ffn: int = 3072
    num_speech_query_token: int = 1  # queries per window; SALMONN uses 1 -> 88 tokens per 30 s
    qformer_dropout: float = 0.1  # BERT hidden/attention dropout, as SALMONN trains it
    second_per_window: float = 0.333333  # 17 Whisper frames; shorter windows = more LLM tokens
    second_stride: float = 0.333333  # equal to the window: no overlap, as SALMONN
    # --- LLM: HF causal LM from a path, or random init from llm_config (needs "model_type")
    llm_path: str | None = None
    llm_config: dict | None = None
    tokenizer_path: str | None = None  # defaults to llm_path
    # True: the fast tokenizer, whose offsets cross-tokenizer losses need. SALMONN loads the
    # slow LlamaTokenizer (False here; needs sentencepiece), which takes offsets from its fast twin
    use_fast: bool = True
    freeze_llm: bool = (
        True  # SALMONN freezes the LLM base; False trains it fully (tiny from-scratch demos)
    )
    lora: bool = True
    lora_rank: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")  # the field's light student adds gate_proj
    prompt_template: str = "USER: {}\nASSISTANT:"
    end_sym: str = "</s>"  # Vicuna "</s>", Llama-3.2 "<|end_of_text|>", Qwen "<|im_end|>"
    max_txt_len: int = 300  # answer tokens (with end_sym) kept; longer answers are truncated
    dtype: str = "float32"  # one dtype for everything (when `precision` is None)
    # fp32 | bf16 | fp16 | salmonn (front ends and bridge fp32, LLM fp16/bf16): see
    # distill.modeling.precision; None follows `dtype`
    precision: str | None = None
    trust_remote_code: bool = False  # only for LLM repos that need their own modelling code
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes (e.g. provenance)

    def __post_init__(self) -> None:
        self.lora_targets = tuple(self.lora_targets)
        _require(self.dtype in _DTYPES, "dtype", f"must be one of {_DTYPES}, got {self.dtype!r}")
        from distill.modeling.precision import PRECISIONS

        _require(
            self.precision is None or self.precision in PRECISIONS,
            "precision",
            f"must be one of {PRECISIONS} or None, got {self.precision!r}",
        )
        _require(
            self.audio_encoder in _AUDIO_ENCODERS,
            "audio_encoder",
            f"must be one of {_AUDIO_ENCODERS}, got {self.audio_encoder!r}",
        )
        _require(
            self.audio_encoder is not None or self.audio_encoder_path is None,
            "audio_encoder_path",
            "is set but audio_encoder is None; say which kind ('beats' or 'ced')",
        )
        for name in ("qformer_hidden", "qformer_layers", "qformer_heads", "qformer_ffn"):
            _require(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        _require(
            self.qformer_hidden % self.qformer_heads == 0,
            "qformer_hidden",
            f"{self.qformer_hidden} is not divisible by qformer_heads={self.qformer_heads}",
        )
        _require(self.num_speech_query_token >= 1, "num_speech_query_token", "must be >= 1")
        for name in ("second_per_window", "second_stride"):
            _require(
                0 < getattr(self, name) <= 30,
                name,
                f"must be in (0, 30] s, got {getattr(self, name)}",
            )
        _require(self.lora_rank >= 1, "lora_rank", f"must be >= 1, got {self.lora_rank}")
        _require(self.lora_alpha > 0, "lora_alpha", f"must be > 0, got {self.lora_alpha}")
        _require(
            0 <= self.qformer_dropout < 1,
            "qformer_dropout",
            f"must be in [0, 1), got {self.qformer_dropout}",
        )
        _require(
            0 <= self.lora_dropout < 1,
            "lora_dropout",
            f"must be in [0, 1), got {self.lora_dropout}",
        )
        _require(
            not self.lora or len(self.lora_targets) > 0, "lora_targets", "is empty but lora=True"
        )
        _require(self.max_txt_len >= 2, "max_txt_len", f"must be >= 2, got {self.max_txt_len}")
        _require(bool(self.end_sym), "end_sym", "must be a non-empty string")
        _require(
            "{}" in self.prompt_template,
            "prompt_template",
            f"needs a '{{}}' slot for the instruction, got {self.prompt_template!r}",
        )
        _require(
            self.whisper_path is not None or self.whisper_config is not None,
            "whisper_path",
            "set whisper_path (pretrained) or whisper_config (random init)",
        )
        _require(
            self.llm_path is not None or self.llm_config is not None,
            "llm_path",
            "set llm_path (pretrained) or llm_config (random init, with 'model_type')",
        )
        if self.llm_path is None:
            _require("model_type" in self.llm_config, "llm_config", "needs a 'model_type' key")
        _require(
            self.tokenizer_path is not None or self.llm_path is not None,
            "tokenizer_path",
            "is needed when the LLM is built from llm_config",
        )

    # ------------------------------------------------------------------ dicts
    def to_dict(self) -> dict:
        """A JSON-ready dict; `from_dict(to_dict())` gives an equal config."""
        d = dataclasses.asdict(self)
        d["lora_targets"] = list(self.lora_targets)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> AudioLLMConfig:
        """Build from a dict; an unknown key raises `ConfigError` naming it."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"AudioLLMConfig: unknown key(s) {unknown}; known keys are {sorted(known)}"
            )
        return cls(**d)

    def replace(self, **changes: Any) -> AudioLLMConfig:
        """A copy with some fields changed (validated again)."""
        return AudioLLMConfig.from_dict({**self.to_dict(), **changes})

    @property
    def resolved_tokenizer_path(self) -> str | None:
        return self.tokenizer_path or self.llm_path

    # --------------------------------------------------------------- SALMONN
    @classmethod
    def from_salmonn_yaml(
        cls, path_or_dict: str | os.PathLike | dict, **overrides: Any
    ) -> AudioLLMConfig:
        """Read a SALMONN config (whole YAML with a `model:` block, or the block itself).

        Mapping: llama_path -> llm_path, beats_path -> audio_encoder_path (audio_encoder="beats"),
        freeze_beats -> freeze_audio_encoder; whisper_path, freeze_whisper, num_speech_query_token,
        second_per_window, second_stride, lora*, prompt_template, max_txt_len and end_sym keep
        their names. ckpt / prompt files / multi_prompt are not model structure and are ignored
        here (`distill.modeling.salmonn.build_salmonn` loads `ckpt`).

        Raises:
            ConfigError: a key SALMONN does not have, or use_speech_Qformer /
                window_level_Qformer set to False (only the window-level Q-Former exists here).
        """
        block = read_salmonn_model_block(path_or_dict)
        for flag in ("use_speech_Qformer", "window_level_Qformer"):
            if not block.get(flag, True):
                raise ConfigError(
                    f"SALMONN config: {flag}=False is not supported (only the window-level Q-Former)"
                )
        renames = {"llama_path": "llm_path", "freeze_beats": "freeze_audio_encoder"}
        same = {
            "whisper_path", "freeze_whisper", "num_speech_query_token", "second_per_window",
            "second_stride", "lora", "lora_rank", "lora_alpha", "lora_dropout",
            "prompt_template", "max_txt_len", "end_sym",
        }  # fmt: skip
        kwargs: dict[str, Any] = {}
        for key, value in block.items():
            if key in SALMONN_IGNORED_KEYS:
                continue
            if key == "beats_path":
                if value:
                    kwargs.update(audio_encoder="beats", audio_encoder_path=str(value))
            elif key in renames:
                kwargs[renames[key]] = value
            elif key in same:
                kwargs[key] = value
            else:
                raise ConfigError(f"SALMONN config: unknown model key {key!r}")
        if not kwargs.get("prompt_template"):
            kwargs.pop("prompt_template", None)  # SALMONN's "" means "no template"; keep ours
        for key in ("whisper_path", "llm_path"):
            if not kwargs.get(key):
                kwargs.pop(key, None)
        kwargs.setdefault("name", "salmonn")
        kwargs.update(overrides)
        return cls.from_dict(kwargs)


def read_salmonn_model_block(path_or_dict: str | os.PathLike | dict) -> dict:
    """The `model:` block of a SALMONN YAML (path or already-parsed dict)."""
    if isinstance(path_or_dict, dict):
        data = path_or_dict
    else:
        import yaml

        path = os.fspath(path_or_dict)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"SALMONN config not found: {path}")
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"SALMONN config must be a mapping, got {type(data).__name__}")
    block = data.get("model", data)
    if not isinstance(block, dict):
        raise ConfigError("SALMONN config: `model:` must be a mapping")
    return dict(block)


def _require(cond: bool, name: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"AudioLLMConfig.{name} {msg}")
