"""Architecture configs bundled with the package, so real-scale models build without weights.

`distill/configs/<kind>/<name>.json` holds the public `config.json` values of one model
(kind "whisper", "llm" or "encoders"), plus metadata keys that start with "_":
`_source` names the public file the values came from, `_hub_id` the hub repository.

    >>> cfg = load_bundled_config("llm", "Qwen/Qwen2.5-0.5B-Instruct")
    >>> cfg["hidden_size"], cfg["model_type"]
    (896, 'qwen2')

Names are matched case-insensitively, "-" and "_" are interchangeable, and a hub-style
"org/" prefix is ignored, so "openai/whisper-large-v3-turbo" and "whisper-large-v3-turbo"
find the same file, and "ced-small" finds `encoders/ced_small.json`.
The returned dict has the metadata keys removed (pass `keep_meta=True` to keep them), so it
can go straight into `AudioLLMConfig.whisper_config` / `llm_config` / `audio_encoder_config`.
"""

from __future__ import annotations

import json
import os
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

from distill._instantiate import ConfigError

KINDS = ("whisper", "llm", "encoders")


def _kind_dir(kind: str):
    if kind not in KINDS:
        raise ConfigError(f"unknown bundled config kind {kind!r}; expected one of {KINDS}")
    return resources.files("distill").joinpath("configs", kind)


def bundled_names(kind: str) -> list[str]:
    """Names of the configs bundled for `kind`, sorted (file stems, lower case)."""
    folder = _kind_dir(kind)
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def _normalise(name: str) -> str:
    return name.strip().rsplit("/", 1)[-1].lower().removesuffix(".json")


def load_bundled_config(kind: str, name: str, *, keep_meta: bool = False) -> dict:
    """The bundled architecture config `name` of `kind` as a plain dict.

    Args:
        kind: "whisper", "llm" or "encoders".
        name: file stem or hub id, e.g. "whisper-small", "meta-llama/Llama-3.2-3B-Instruct".
        keep_meta: keep the "_source"/"_hub_id" keys.

    Returns:
        A fresh dict (safe to mutate) of config kwargs.

    Raises:
        ConfigError: unknown kind or name (the message lists the bundled names).
    """
    stem = _normalise(name)
    folder = _kind_dir(kind)
    for candidate in (stem, stem.replace("-", "_"), stem.replace("_", "-")):
        path = folder.joinpath(f"{candidate}.json")
        if path.is_file():
            stem = candidate
            break
    else:
        raise ConfigError(
            f"no bundled {kind} config named {name!r} (looked for distill/configs/{kind}/{stem}.json); "
            f"bundled: {', '.join(bundled_names(kind)) or 'none'}"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"distill/configs/{kind}/{stem}.json is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"distill/configs/{kind}/{stem}.json must hold a JSON object")
    if keep_meta:
        return data
    return {k: v for k, v in data.items() if not k.startswith("_")}


def bundled_source(kind: str, name: str) -> str:
    """The "_source" note of a bundled config (where its values were taken from)."""
    return str(load_bundled_config(kind, name, keep_meta=True).get("_source", "unknown"))


# ------------------------------------------------------------------ SALMONN-style configs
# End symbol per LLM family (REFERENCE.md: SALMONN's Vicuna, NOTA's Llama-3.2, Qwen chat).
END_SYMBOLS = (("vicuna", "</s>"), ("llama-3", "<|end_of_text|>"), ("qwen", "<|im_end|>"))


def end_symbol(llm_name: str) -> str:
    """The answer end symbol SALMONN-style training uses for the LLM family of `llm_name`."""
    stem = _normalise(llm_name)
    for family, sym in END_SYMBOLS:
        if stem.startswith(family):
            return sym
    raise ConfigError(f"no end symbol known for LLM {llm_name!r}; set end_sym explicitly")


def bundled_audio_llm_config(
    name: str,
    *,
    whisper: str,
    llm: str,
    audio_encoder: str | None = None,
    audio_encoder_config: str | None = None,
    **overrides: Any,
):
    """An `AudioLLMConfig` whose parts are bundled architecture configs (no weights).

    Everything else keeps SALMONN's defaults (Q-Former 768 x 2 layers x 12 heads, FFN 3072,
    1 query per 17-frame window, LoRA r 8 / alpha 32 / dropout 0.1 on q,v, template
    "USER: {}\\nASSISTANT:"); `end_sym` follows the LLM family. The LLM's hub id is recorded
    as `tokenizer_path`, and all hub ids and `_source` notes go into `extra`, so
    `with_hub_paths` can turn the config into one that loads released weights.

    Args:
        name: config name (the preset name).
        whisper: bundled whisper config name, e.g. "whisper-large-v2".
        llm: bundled LLM config name, e.g. "vicuna-7b-v1.5".
        audio_encoder: "beats", "ced" or None.
        audio_encoder_config: bundled encoder config name (kind "encoders").
        **overrides: any other `AudioLLMConfig` field.
    """
    from distill.modeling.config import AudioLLMConfig

    w_meta = load_bundled_config("whisper", whisper, keep_meta=True)
    l_meta = load_bundled_config("llm", llm, keep_meta=True)
    hub = {"whisper": w_meta.get("_hub_id"), "llm": l_meta.get("_hub_id")}
    sources = {"whisper": w_meta.get("_source"), "llm": l_meta.get("_source")}
    enc_cfg = None
    if audio_encoder_config is not None:
        e_meta = load_bundled_config("encoders", audio_encoder_config, keep_meta=True)
        enc_cfg = {k: v for k, v in e_meta.items() if not k.startswith("_")}
        hub["audio_encoder"] = e_meta.get("_hub_id")
        sources["audio_encoder"] = e_meta.get("_source")
    kwargs: dict[str, Any] = {
        "name": name,
        "whisper_config": {k: v for k, v in w_meta.items() if not k.startswith("_")},
        "audio_encoder": audio_encoder,
        "audio_encoder_config": enc_cfg,
        "llm_config": {k: v for k, v in l_meta.items() if not k.startswith("_")},
        "tokenizer_path": hub["llm"],
        "end_sym": end_symbol(llm),
        "extra": {
            "bundled": {"whisper": whisper, "llm": llm, "audio_encoder": audio_encoder_config},
            "hub": hub,
            "sources": sources,
        },
    }
    kwargs.update(overrides)
    return AudioLLMConfig(**kwargs)


def with_hub_paths(config, *, audio_encoder_path: str | None = None):
    """A copy of a bundled config that loads released weights from the hub ids in `extra`.

    The audio encoder loads from a local file only (BEATs and CED checkpoints are files, not
    transformers repos): pass `audio_encoder_path`, else it stays randomly initialised.
    """
    hub = (config.extra or {}).get("hub") or {}
    if not hub.get("whisper") or not hub.get("llm"):
        raise ConfigError(f"config {config.name!r} has no hub ids in extra['hub']")
    changes: dict[str, Any] = {
        "whisper_path": hub["whisper"],
        "whisper_config": None,
        "llm_path": hub["llm"],
        "llm_config": None,
        "tokenizer_path": None,
    }
    if config.audio_encoder and audio_encoder_path:
        changes["audio_encoder_path"] = audio_encoder_path
    return config.replace(**changes)


def offline_architecture(config):
    """Swap hub ids in `config` for bundled architecture configs, so it builds offline on meta.

    A SALMONN YAML names weights (`whisper_path: openai/whisper-large-v2`, `llama_path:
    meta-llama/Llama-3.2-3B-Instruct`, a BEATs .pt). Each path that is not a local file or
    directory but matches a bundled config is replaced by that config; a missing BEATs file
    becomes the bundled BEATs iter3+ config. Local paths and unknown ids stay as they are.
    """
    changes: dict[str, Any] = {}
    for field_name, kind, config_field in (
        ("whisper_path", "whisper", "whisper_config"),
        ("llm_path", "llm", "llm_config"),
    ):
        path = getattr(config, field_name)
        if path and not os.path.exists(path) and _normalise(path) in bundled_names(kind):
            changes.update({field_name: None, config_field: load_bundled_config(kind, path)})
            if kind == "llm":
                changes["tokenizer_path"] = config.tokenizer_path or path
    path = config.audio_encoder_path
    if config.audio_encoder == "beats" and path and not os.path.exists(path):
        changes.update(
            audio_encoder_path=None,
            audio_encoder_config=load_bundled_config("encoders", "beats_iter3_plus"),
        )
    return config.replace(**changes) if changes else config


# ------------------------------------------------------------------ tiny presets
TINY_TOKENIZER_ENV = "DISTILL_TINY_TOKENIZER_DIR"


def tiny_tokenizer_dir(flavor: str) -> str:
    """A locally trained tiny tokenizer dir ("bpe" Qwen-like, "unigram" Llama-like), cached.

    Trained with `distill.modeling.tokenizers.train_tiny_tokenizer` on first use, under
    $DISTILL_TINY_TOKENIZER_DIR/<flavor>, else ~/.cache/distill/tiny-tokenizer/<flavor>;
    later calls reuse it, so the tiny presets stay zero-argument and offline.
    """
    from distill.modeling.tokenizers import train_tiny_tokenizer

    root = (
        os.environ.get(TINY_TOKENIZER_ENV) or Path.home() / ".cache" / "distill" / "tiny-tokenizer"
    )
    out = Path(root) / flavor
    if not (out / "tokenizer.json").is_file():
        # train next to it, then rename: a second process racing us keeps one complete copy
        tmp = out.with_name(f".{flavor}.{os.getpid()}")
        train_tiny_tokenizer(tmp, flavor=flavor)
        try:
            os.rename(tmp, out)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(out)
