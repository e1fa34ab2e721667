"""`distill export`: a trained model in the formats the field loads.

    distill export runs/ddat --format salmonn --out export/salmonn
    distill export runs/ddat --format hf --out export/hf

- `salmonn`: `checkpoint.pth` = `{"model": state}` with SALMONN's key names
  (`distill.modeling.salmonn.save_salmonn_checkpoint`, the inverse of its loader: trainable
  weights and buffers, peft's `default` adapter name dropped) and `decode.yaml` with a SALMONN `model:` block (paths,
  LoRA, windows, prompt template, `ckpt`) and SALMONN's `generate:` settings, the file
  NOTA's evaluator reads. What SALMONN's YAML cannot say (a Q-Former that is not BERT-base,
  a CED audio encoder) is listed in `export.json` and printed.
- `hf`: the LLM with LoRA merged into its weights (peft's `merge_and_unload`) as a
  `save_pretrained` directory `llm/` with its tokenizer, and everything else (encoders,
  Q-Former, projection, layer norms) in `audio.safetensors`, with a `config.json` that
  `load_hf_export` (or `AudioLLM`) rebuilds without the original paths.

RUN is a run directory (its `model/`) or a model directory (`AudioLLM.save_pretrained`).
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

from distill.errors import DistillError

# SALMONN's Q-Former is BERT-base: its YAML has no field for other sizes
SALMONN_QFORMER = {"qformer_hidden": 768, "qformer_layers": 2, "qformer_heads": 12,
                   "qformer_ffn": 3072}  # fmt: skip


class ExportError(DistillError, ValueError):
    """The model cannot be written in the asked format (the message says why)."""


def model_dir_of(run: str | Path) -> Path:
    run = Path(run)
    for cand in (run / "model", run):
        if (cand / "config.json").is_file():
            return cand
    raise ExportError(f"{run}: no model found (expected {run / 'model' / 'config.json'})")


def export_salmonn(model, out: str | Path) -> dict[str, Any]:
    """Write checkpoint.pth, decode.yaml and export.json for `model` (an AudioLLM)."""
    import yaml

    from distill.modeling.generation import DECODE_PRESETS
    from distill.modeling.salmonn import save_salmonn_checkpoint

    cfg = model.config
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.pth"
    state = save_salmonn_checkpoint(model, ckpt)
    caveats = [
        f"{k}={getattr(cfg, k)} (SALMONN's Q-Former is BERT-base: {v})"
        for k, v in SALMONN_QFORMER.items()
        if getattr(cfg, k) != v
    ]
    if cfg.audio_encoder not in (None, "beats"):
        caveats.append(f"audio_encoder={cfg.audio_encoder!r}: SALMONN's YAML only knows BEATs")
    for key in ("whisper_path", "llm_path"):
        if not getattr(cfg, key):
            caveats.append(f"{key} is not set: SALMONN builds the base model from a path")
    block = {
        "llama_path": cfg.llm_path or "",
        "whisper_path": cfg.whisper_path or "",
        "freeze_whisper": cfg.freeze_whisper,
        "beats_path": (cfg.audio_encoder_path or "") if cfg.audio_encoder == "beats" else "",
        "freeze_beats": cfg.freeze_audio_encoder,
        "use_speech_Qformer": True,
        "num_speech_query_token": cfg.num_speech_query_token,
        "window_level_Qformer": True,
        "second_per_window": cfg.second_per_window,
        "second_stride": cfg.second_stride,
        "lora": cfg.lora,
        "lora_rank": cfg.lora_rank,
        "lora_alpha": cfg.lora_alpha,
        "lora_dropout": cfg.lora_dropout,
        "prompt_template": cfg.prompt_template,
        "max_txt_len": cfg.max_txt_len,
        "end_sym": cfg.end_sym,
        "ckpt": str(ckpt.resolve()),
    }
    d = DECODE_PRESETS["salmonn"]
    generate = {"max_new_tokens": d.max_new_tokens, "num_beams": d.num_beams,
                "do_sample": d.do_sample, "min_length": d.min_length,
                "temperature": d.temperature, "top_p": 0.9,  # SALMONN's value (beams ignore it)
                "repetition_penalty": d.repetition_penalty,
                "length_penalty": d.length_penalty}  # fmt: skip
    (out / "decode.yaml").write_text(yaml.safe_dump({"model": block, "generate": generate},
                                                    sort_keys=False))  # fmt: skip
    info = {"format": "salmonn", "keys": len(state), "caveats": caveats,
            "lora_targets": list(cfg.lora_targets), "config": cfg.to_dict()}  # fmt: skip
    (out / "export.json").write_text(json.dumps(info, indent=1, default=str) + "\n")
    return info


def export_hf(model, out: str | Path) -> dict[str, Any]:
    """Write llm/ (LoRA merged), audio.safetensors and config.json for `model`."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    llm = copy.deepcopy(model.llama_model)
    if hasattr(llm, "merge_and_unload"):
        llm = llm.merge_and_unload()
    llm.save_pretrained(out / "llm")
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(out / "llm")
    audio = {
        k: v.detach().cpu().contiguous()
        for k, v in model.state_dict().items()
        if not k.startswith("llama_model.")
    }
    save_file(audio, out / "audio.safetensors")
    cfg = model.config.to_dict()
    cfg.update(
        llm_path="llm", llm_config=None, tokenizer_path=None, lora=False,
        whisper_path=None, whisper_config=model.speech_encoder.config.to_dict(),
        audio_encoder_path=None,
    )  # fmt: skip
    (out / "config.json").write_text(json.dumps(cfg, indent=1, default=str) + "\n")
    info = {"format": "hf", "audio_tensors": len(audio), "merged_lora": model.config.lora}
    (out / "export.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def load_hf_export(path: str | Path):
    """Rebuild the AudioLLM that `export_hf` wrote (no original paths needed)."""
    from safetensors.torch import load_file

    from distill.modeling.audio_llm import AudioLLM
    from distill.modeling.checkpoint import key_problems
    from distill.modeling.config import AudioLLMConfig

    path = Path(path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["llm_path"] = str(path / cfg["llm_path"])
    model = AudioLLM(AudioLLMConfig.from_dict(cfg))
    state = load_file(path / "audio.safetensors")
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("llama_model.")}
    problems = key_problems(own, state)
    if problems:
        raise ExportError(f"{path / 'audio.safetensors'}: {problems}")
    model.load_state_dict(state, strict=False)
    return model.eval()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run directory (with model/) or model directory")
    parser.add_argument("--format", required=True, choices=["salmonn", "hf"])
    parser.add_argument("--out", required=True, help="output directory")


def run(args: argparse.Namespace) -> int:
    from distill.modeling.audio_llm import AudioLLM

    model = AudioLLM.from_pretrained(model_dir_of(args.run)).eval()
    info = (
        export_salmonn(model, args.out) if args.format == "salmonn" else export_hf(model, args.out)
    )
    for line in info.get("caveats", []):
        print(f"distill export: note: {line}")
    print(f"{args.format} export: {args.out}")
    return 0


__all__ = ["ExportError", "export_hf", "export_salmonn", "load_hf_export"]
