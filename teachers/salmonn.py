"""`SalmonnTeacher`: a released SALMONN checkpoint as a frozen teacher.

Loads SALMONN's own config YAML (its `model:` block: llama_path, whisper_path,
beats_path, ckpt, lora settings, prompt template, end_sym, ...) with local paths for
Whisper, BEATs and the LLM, then the released `salmonn_7b_v0.pth` / `salmonn_v1.pth`
(or NOTA's Llama-3.2-3B checkpoint) with `weights_only=True`. Missing critical keys
fail loudly, extra keys are tolerated (see `distill.modeling.salmonn`).

    teacher:
      _component_: teachers.SalmonnTeacher
      config: /ckpt/salmonn/configs/decode_config.yaml
      ckpt: /ckpt/salmonn/salmonn_7b_v0.pth
      dtype: bfloat16
"""

from __future__ import annotations

from collections.abc import Sequence

from teachers.audio_llm import AudioLLMTeacher


class SalmonnTeacher(AudioLLMTeacher):
    """Args: see `AudioLLMTeacher`; plus
    config: SALMONN YAML path (or its parsed dict).
    ckpt: checkpoint path; defaults to the YAML's `model.ckpt`.
    overrides: `AudioLLMConfig` fields to change (e.g. {"llm_path": "/local/vicuna"}).
    """

    def __init__(
        self,
        config,
        *,
        ckpt: str | None = None,
        dtype: str = "bfloat16",
        device: str | None = None,
        topk: int | None = None,
        hidden: Sequence[str] = (),
        overrides: dict | None = None,
    ):
        from distill.modeling.salmonn import build_salmonn

        model = build_salmonn(config, ckpt=ckpt, **(overrides or {}))
        super().__init__(model=model, dtype=dtype, device=device, topk=topk, hidden=hidden)
        self.path = ckpt
