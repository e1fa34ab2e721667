"""`distill eval`: accuracy, efficiency and provenance of one model, into OUT_DIR.

    distill eval --model runs/ddat/model --data data/test.json --out runs/ddat/eval
    distill eval --model runs/ddat/model --data data/test.json --efficiency baseline,strict --out ...
    distill eval --random-init qwen2.5-0.5b+whisper-v3-turbo+ced-small --efficiency baseline --out ...

`--random-init PRESET` builds a preset (entry-point group `distill.presets`) at its true size
with random weights (bf16 on GPU; fp32 on CPU unless `--dtype bfloat16`) and measures only
efficiency: latency and memory do not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import logging
import os
from importlib.metadata import entry_points
from pathlib import Path

import torch

from distill.eval.efficiency import PROTOCOLS, run_protocols
from distill.modeling.generation import DECODE_PRESETS, decode_settings

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="AudioLLM save_pretrained directory")
    src.add_argument("--random-init", metavar="PRESET", help="preset name; efficiency only")
    parser.add_argument("--data", help="test file (JSON list or {'annotation': [...]})")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--efficiency", default="", help="comma list of: baseline,strict")
    parser.add_argument("--name", help="model name in reports (default: model dir / preset)")
    parser.add_argument("--role", default="student", help="teacher | baseline | student | ...")
    parser.add_argument(
        "--decode", default="salmonn", choices=sorted(DECODE_PRESETS),
        help="decode preset: salmonn (the field's: 4 beams, 200 tokens, min_length 1) or greedy",
    )  # fmt: skip
    parser.add_argument("--num-beams", type=int, help="override the preset's beams")
    parser.add_argument("--max-new-tokens", type=int, help="override the preset's token cap")
    parser.add_argument("--min-length", type=int, help="override min_length (0 allows empty)")
    parser.add_argument("--batch-size", type=int, default=8, help="field default 8")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16", "salmonn"],
                        help="per-part dtypes (salmonn: fp32 encoders and bridge, fp16/bf16 "
                        "LLM); overrides --dtype for --model")  # fmt: skip
    parser.add_argument("--warmup", type=int, default=10, help="efficiency warm-up runs")
    parser.add_argument("--runs", type=int, default=100, help="efficiency timed runs")
    parser.add_argument("--decode-tokens", type=int, default=32, help="strict TPOT steps")
    parser.add_argument("--clip-seconds", type=float, default=10.0, help="efficiency clip length")
    parser.add_argument("--keep-case", action="store_true",
                        help="predictions.csv keeps the model's case (default: lowercased, "
                        "as NOTA's evaluator scores)")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def parse_protocols(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in names if p not in PROTOCOLS]
    if unknown:
        raise SystemExit(
            f"--efficiency: unknown protocol(s) {unknown}; choose from {list(PROTOCOLS)}"
        )
    return names


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def preset_registry() -> dict:
    """name -> zero-arg config factory, merged over every `distill.presets` entry point."""
    registry: dict = {}
    for ep in entry_points(group="distill.presets"):
        try:
            registry.update(ep.load())
        except ImportError as err:
            log.warning("preset entry point %s could not be loaded: %s", ep.value, err)
    return registry


def substitute_tokenizer() -> str:
    """A byte-level BPE tokenizer trained locally (cached), for presets whose tokenizer is a
    hub id that is not on disk. Only the prompt's token count matters for efficiency, and it
    differs: e.g. 61 text tokens with this tokenizer against about 25 with Qwen's, next to the
    88 audio tokens of a 30 s window. The results record `prefill_positions`."""
    from distill.modeling.tokenizers import train_tiny_tokenizer

    root = Path(
        os.environ.get("DISTILL_TINY_TOKENIZER_DIR")
        or Path.home() / ".cache" / "distill" / "tiny-tokenizer"
    )
    out = root / "bpe"
    if not (out / "tokenizer.json").is_file():
        out.mkdir(parents=True, exist_ok=True)
        train_tiny_tokenizer(str(out), flavor="bpe")
    return str(out)


def build_random(preset: str, device: torch.device, dtype: torch.dtype):
    """A preset's AudioLLM at true size with random weights (no checkpoint read).

    Returns:
        (model, notes): notes record a substituted tokenizer, if any.
    """
    from distill.modeling.audio_llm import AudioLLM

    registry = preset_registry()
    if preset not in registry:
        raise SystemExit(f"--random-init: unknown preset {preset!r}; known: {sorted(registry)}")
    config = registry[preset]()
    dtype_name = str(dtype).removeprefix("torch.")
    changes: dict = {"dtype": dtype_name}
    notes: dict = {"preset": preset, "dtype": dtype_name}
    tok = config.resolved_tokenizer_path
    if tok is None or not os.path.isdir(tok):
        changes["tokenizer_path"] = substitute_tokenizer()
        notes["tokenizer_substitute"] = (
            f"{tok!r} is not a local dir; used {changes['tokenizer_path']}"
        )
        log.warning("--random-init: tokenizer %r not on disk, using a locally trained one", tok)
    if config.whisper_path is not None or config.llm_path is not None:
        raise SystemExit(
            f"--random-init: preset {preset!r} loads weights from paths; it needs bundled configs"
        )
    model = AudioLLM(config.replace(**changes), device=device)
    return model.to(device=device, dtype=dtype), notes


def run(args: argparse.Namespace) -> int:
    from distill.eval.io import read_test_items
    from distill.eval.runner import evaluate_model, write_outputs

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    protocols = parse_protocols(args.efficiency)
    device = resolve_device(args.device)
    progress = not args.no_progress
    random_notes = None
    if args.random_init:
        if not protocols:
            raise SystemExit("--random-init measures efficiency only: pass --efficiency")
        model, random_notes = build_random(
            args.random_init, device, resolve_dtype(args.dtype, device)
        )
        name, model_dir = args.name or args.random_init, None
    else:
        from distill.modeling.audio_llm import AudioLLM
        from distill.modeling.precision import FROM_DTYPE, apply_precision

        # load, then cast, then move: the device never holds an fp32 copy beside the cast one
        model = AudioLLM.from_pretrained(args.model)
        precision = args.precision
        if precision is None and args.dtype != "auto":
            precision = FROM_DTYPE[str(resolve_dtype(args.dtype, device)).removeprefix("torch.")]
        if precision is not None:
            apply_precision(model, precision, device)
            model.config.precision = precision
        model = model.to(device)
        name, model_dir = args.name or Path(args.model).resolve().name, args.model
    efficiency = run_protocols(
        model, protocols, warmup=args.warmup, runs=args.runs, decode_tokens=args.decode_tokens,
        clip_seconds=args.clip_seconds, progress=progress,
    )  # fmt: skip
    result = None
    if args.data and not args.random_init:
        decode = decode_settings(
            args.decode, where="eval", num_beams=args.num_beams,
            max_new_tokens=args.max_new_tokens, min_length=args.min_length,
        )  # fmt: skip
        result = evaluate_model(
            model, read_test_items(args.data), decode=decode, batch_size=args.batch_size,
            progress=progress,
        )  # fmt: skip
    metrics = write_outputs(
        args.out, model=model, name=name, role=args.role, result=result,
        efficiency=efficiency, model_dir=model_dir,
        extra={"random_init": random_notes, "test_file": args.data},
        lowercase_submission=not args.keep_case,
    )  # fmt: skip
    print(summary_line(metrics))
    return 0


def summary_line(metrics: dict) -> str:
    parts = [f"{metrics['model']['name']} ({metrics['model']['role']})"]
    for task, acc in metrics["accuracy"].items():
        for key in acc.get("metrics", []) or []:
            if acc.get(key) is not None:
                parts.append(f"{task} {key}={acc[key]:.4f}")
        if acc.get("metric") == "wer":
            parts.append(f"{task} WER={acc['wer_percent']:.2f}%")
    for proto, eff in metrics["efficiency"].items():
        parts.append(
            f"[{proto}] TTFT={eff['ttft_s']:.4f}s TPOT={eff['tpot_s']:.4f}s "
            f"mem={eff['memory_gb']:.3f}GiB ({eff['memory_kind']})"
        )
    return " | ".join(parts)
