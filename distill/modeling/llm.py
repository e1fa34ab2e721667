"""Building the LLM half of an `AudioLLM`: HF causal LM, frozen base, peft LoRA."""

from __future__ import annotations

import torch
from torch import nn


def _dtype_kw(dtype: torch.dtype) -> dict:
    """transformers >= 4.56 calls it `dtype`; older releases only know `torch_dtype`."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def llm_config_from(config):
    """The transformers config of the LLM (local dir or `llm_config` kwargs)."""
    from transformers import AutoConfig

    if config.llm_path is not None:
        try:
            return AutoConfig.from_pretrained(
                config.llm_path, local_files_only=True, trust_remote_code=config.trust_remote_code
            )
        except OSError as err:
            raise FileNotFoundError(
                f"cannot read LLM config at llm_path={config.llm_path!r}: {err}"
            ) from err
    kwargs = dict(config.llm_config)
    return AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)


def build_llm(config, *, load_weights: bool = True) -> nn.Module:
    """The HF causal LM: pretrained from `llm_path`, else randomly initialised from its config."""
    from transformers import AutoModelForCausalLM

    dtype = torch_dtype(config.dtype)
    if config.llm_path is not None and load_weights:
        try:
            return AutoModelForCausalLM.from_pretrained(
                config.llm_path,
                local_files_only=True,
                trust_remote_code=config.trust_remote_code,
                **_dtype_kw(dtype),
            )
        except OSError as err:
            raise FileNotFoundError(
                f"cannot load LLM from llm_path={config.llm_path!r}: {err}"
            ) from err
    cfg = llm_config_from(config)
    return AutoModelForCausalLM.from_config(
        cfg, trust_remote_code=config.trust_remote_code, **_dtype_kw(dtype)
    )


def add_lora(llm: nn.Module, config) -> nn.Module:
    """Freeze the base LM (unless `freeze_llm` is False), then wrap it with peft LoRA on
    `config.lora_targets` (if lora)."""
    for p in llm.parameters():
        p.requires_grad_(not config.freeze_llm)
    if not config.lora:
        return llm
    from peft import LoraConfig, TaskType, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in llm.named_modules()}
    missing = [t for t in config.lora_targets if t not in names]
    if missing:
        raise ValueError(
            f"AudioLLMConfig.lora_targets {missing} name no module of the LLM "
            f"({type(llm).__name__}); e.g. q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"
        )
    peft_cfg = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        inference_mode=False,
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_targets),
    )
    return get_peft_model(llm, peft_cfg)


def base_causal_lm(llama_model: nn.Module) -> nn.Module:
    """The HF causal LM inside a peft wrapper (LoRA layers already injected in it)."""
    get = getattr(llama_model, "get_base_model", None)
    return get() if callable(get) else llama_model


def llm_hidden_size(llm: nn.Module) -> int:
    cfg = llm.config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return cfg.hidden_size
