"""Student presets and builders.

`students.presets.PRESETS` maps a name to a zero-argument builder of an `AudioLLMConfig`
(registered under the `distill.presets` entry-point group, so `distill inspect NAME` and
recipe YAMLs find them):

- `qwen2.5-0.5b+whisper-v3-turbo+ced-small`: the field's light student (LoRA q, v, gate);
- `qwen2.5-1.5b+whisper-v3-turbo+ced-small`: the same encoders with a larger Qwen;
- `llama-3.2-1b+whisper-small+beats`: shares NOTA's Llama-3.2 tokenizer;
- `tiny-student`: 2-layer Qwen2, tiny Whisper and CED, local BPE tokenizer (offline, seconds).

`students.build(preset=..., config=..., path=..., overrides=...)` builds an AudioLLM
(the same as `distill.presets.build_model`, the name recipe YAMLs use).
"""

from distill.presets import build_model as build
from students.presets import PRESETS

__all__ = ["PRESETS", "build"]
