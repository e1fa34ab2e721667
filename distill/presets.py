"""Named model presets, found through the `distill.presets` entry-point group.

`students.presets.PRESETS` and `teachers.presets.PRESETS` register there; the core
looks names up without importing those packages by name.
"""

from __future__ import annotations

import dataclasses
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from distill._instantiate import ConfigError


def all_presets() -> dict[str, Any]:
    """name -> zero-argument callable returning an `AudioLLMConfig`."""
    found: dict[str, Any] = {}
    for ep in entry_points(group="distill.presets"):
        found.update(ep.load())
    return found


def preset_config(name: str, **overrides: Any):
    """The `AudioLLMConfig` of a named preset, with field overrides applied."""
    presets = all_presets()
    if name not in presets:
        known = ", ".join(sorted(presets)) or "none registered (pip install -e . registers them)"
        raise ConfigError(f"unknown preset {name!r}; known presets: {known}")
    config = presets[name]()
    return dataclasses.replace(config, **overrides) if overrides else config


def resolve_config(spec: str | Path | dict, **overrides: Any):
    """A preset name, a config.json / YAML path, a model dir, or a dict -> `AudioLLMConfig`."""
    import json

    import yaml

    from distill.modeling.config import AudioLLMConfig

    if isinstance(spec, dict):
        config = AudioLLMConfig.from_dict(spec)
    else:
        path = Path(spec)
        if path.is_dir():
            path = path / "config.json"
        if path.is_file():
            text = path.read_text()
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
            config = AudioLLMConfig.from_dict(data)
        else:
            return preset_config(str(spec), **overrides)
    return dataclasses.replace(config, **overrides) if overrides else config


def build_model(
    preset: str | None = None,
    *,
    config: dict | str | None = None,
    path: str | None = None,
    seed: int | None = None,
    overrides: dict[str, Any] | None = None,
    inherit: dict[str, Any] | None = None,
):
    """Build an `AudioLLM` for a recipe: from a saved dir (`path`), a preset or a config.

    Args:
        preset: a registered preset name (see `distill inspect --list`).
        config: a config dict or a config.json/YAML path (alternative to `preset`).
        path: a directory written by `AudioLLM.save_pretrained` (weights included).
        seed: seed the random initialisation of parts without pretrained weights.
        overrides: `AudioLLMConfig` field overrides (e.g. {"lora_targets": ["q_proj"]}).
        inherit: {"from": a teacher's save_pretrained dir, "parts": state-dict prefixes}:
            start those parts from the teacher's trained weights instead of random ones
            (`distill.modeling.checkpoint.inherit_weights`), e.g. parts
            ["speech_Qformer", "speech_query_tokens", "ln_speech", "ln_audio"] for a
            student over the teacher's encoders with a Q-Former as wide as the teacher's.
    """
    import torch

    from distill.modeling.audio_llm import AudioLLM

    if sum(x is not None for x in (preset, config, path)) != 1:
        raise ConfigError("build_model needs exactly one of preset=, config= or path=")
    if path is not None:
        return AudioLLM.from_pretrained(path)
    cfg = resolve_config(preset if preset is not None else config, **(overrides or {}))
    if seed is not None:
        torch.manual_seed(seed)
    model = AudioLLM(cfg)
    if inherit:
        from distill.modeling.checkpoint import inherit_weights

        unknown = set(inherit) - {"from", "parts"}
        if unknown or "from" not in inherit or not inherit.get("parts"):
            raise ConfigError(
                f"student.inherit takes 'from' (a save_pretrained dir) and 'parts' (a "
                f"non-empty list of state-dict prefixes); got keys {sorted(inherit)}"
            )
        inherit_weights(model, inherit["from"], list(inherit["parts"]))
    return model
