"""`distill inspect`: sizes, memory and checkpoint keys of a model, without its weights.

A preset name (entry-point group `distill.presets`) or a config file is built on the meta
device, where no memory is allocated, so a 13B teacher is inspected in seconds:

    distill inspect salmonn-7b
    distill inspect salmonn-7b --compare qwen2.5-0.5b+whisper-v3-turbo+ced-small
    distill inspect runs/student/model --keys --json

For each part (speech encoder, audio encoder, Q-Former, projection, LLM, LoRA) it prints the
total and trainable parameter counts and the weight memory in fp32 and bf16/fp16 (same size),
then the LLM's KV-cache bytes per token, 2 * layers * kv_heads * head_dim * bytes, and the
number of audio tokens the LLM sees for a 30 s clip. `ln_speech` / `ln_audio` count with
their encoder; they are trainable, as in SALMONN. `--keys` lists the keys and shapes that a
SALMONN checkpoint of the model holds (Q-Former, projection, LayerNorms, LoRA A/B).

Weight bytes are parameters x dtype size (buffers, activations and the CUDA context come on
top; the field's 3.83 GB for the light student is peak memory, not weights).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from distill._instantiate import ConfigError

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
PARTS = ("speech encoder", "audio encoder", "Q-Former", "projection", "LLM", "LoRA")
# top-level AudioLLM attribute -> part; LoRA parameters are told apart by name
_PREFIX_PART = {
    "speech_encoder": "speech encoder",
    "ln_speech": "speech encoder",
    "beats": "audio encoder",
    "ln_audio": "audio encoder",
    "speech_Qformer": "Q-Former",
    "speech_query_tokens": "Q-Former",
    "speech_llama_proj": "projection",
    "llama_model": "LLM",
}
CLIP_SECONDS = 30.0
SAMPLE_RATE = 16_000


def part_of(name: str) -> str:
    """The part a parameter belongs to, from its AudioLLM (SALMONN) name."""
    if ".lora_" in name:
        return "LoRA"
    return _PREFIX_PART.get(name.split(".", 1)[0], "other")


@dataclass
class PartCount:
    total: int = 0
    trainable: int = 0


@dataclass
class ModelSummary:
    """What `distill inspect` reports about one model.

    Attributes:
        name: preset name or config path.
        parts: part -> parameter counts (shared/tied parameters counted once).
        llm: LLM shape facts: model_type, layers, hidden, heads, kv_heads, head_dim, vocab.
        audio_tokens: LLM input tokens for one `CLIP_SECONDS` clip (windows x queries).
        keys: (key, shape, dtype) of the checkpoint entries, when asked for.
        notes: part -> a short description ("whisper d_model=1280, 32 layers, 80 mels").
    """

    name: str
    parts: dict[str, PartCount]
    llm: dict[str, Any]
    audio_tokens: int
    keys: list[tuple[str, tuple[int, ...], str]] | None = None
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(p.total for p in self.parts.values())

    @property
    def trainable(self) -> int:
        return sum(p.trainable for p in self.parts.values())

    def kv_bytes_per_token(self, dtype: str = "bfloat16") -> int:
        """KV-cache bytes one token adds: keys and values of every layer's KV heads."""
        llm = self.llm
        return 2 * llm["layers"] * llm["kv_heads"] * llm["head_dim"] * DTYPE_BYTES[dtype]

    def to_dict(self) -> dict:
        out = {
            "name": self.name,
            "parts": {
                k: {
                    "total": v.total,
                    "trainable": v.trainable,
                    **{f"bytes_{dt}": v.total * b for dt, b in DTYPE_BYTES.items()},
                }
                for k, v in self.parts.items()
            },
            "total": self.total,
            "trainable": self.trainable,
            "weight_bytes": {dt: self.total * b for dt, b in DTYPE_BYTES.items()},
            "llm": self.llm,
            "kv_cache_bytes_per_token": {dt: self.kv_bytes_per_token(dt) for dt in DTYPE_BYTES},
            "audio_tokens_per_30s": self.audio_tokens,
            "notes": self.notes,
        }
        if self.keys is not None:
            out["keys"] = [{"key": k, "shape": list(s), "dtype": d} for k, s, d in self.keys]
        return out


# ------------------------------------------------------------------------- resolving
def load_presets() -> dict[str, Callable[[], Any]]:
    """All presets registered under the `distill.presets` entry-point group."""
    from distill.presets import all_presets

    return all_presets()


def resolve_config(spec: str):
    """An `AudioLLMConfig` from a preset name, a config.json/.yaml file or a saved model dir.

    A YAML with a SALMONN `model:` block (llama_path, whisper_path, ...) is read with
    `AudioLLMConfig.from_salmonn_yaml`, and hub ids in it that are bundled are swapped for
    their architecture configs (`offline_architecture`), so it inspects offline. Anything
    else goes to `distill.presets.resolve_config` (preset name, or a file of
    `AudioLLMConfig` fields, or a saved model dir).
    """
    from distill.modeling.bundled import offline_architecture
    from distill.modeling.config import AudioLLMConfig, read_salmonn_model_block
    from distill.presets import resolve_config as resolve_preset_or_file

    if spec.endswith((".yaml", ".yml")) and os.path.isfile(spec):
        block = read_salmonn_model_block(spec)
        if "llama_path" in block or "beats_path" in block:
            return offline_architecture(AudioLLMConfig.from_salmonn_yaml(block))
    config = resolve_preset_or_file(spec)
    if not isinstance(config, AudioLLMConfig):
        raise ConfigError(f"{spec!r} gave {type(config).__name__}, not an AudioLLMConfig")
    return config


def build_meta(config):
    """The `AudioLLM` of `config` on the meta device (shapes only, no memory)."""
    from distill.modeling.audio_llm import AudioLLM

    return AudioLLM(config, meta=True)


# ------------------------------------------------------------------------- counting
def count_parts(model) -> dict[str, PartCount]:
    """Parameter counts per part of an AudioLLM-named module; tied weights count once."""
    parts = {name: PartCount() for name in PARTS}
    for name, param in model.named_parameters():
        count = parts.setdefault(part_of(name), PartCount())
        count.total += param.numel()
        count.trainable += param.numel() if param.requires_grad else 0
    return parts


def llm_shape(hf_config) -> dict[str, Any]:
    """Layers, heads and widths of an HF causal-LM config (GQA and explicit head_dim aware)."""
    heads = hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
    return {
        "model_type": hf_config.model_type,
        "layers": hf_config.num_hidden_layers,
        "hidden": hf_config.hidden_size,
        "heads": heads,
        "kv_heads": getattr(hf_config, "num_key_value_heads", None) or heads,
        "head_dim": head_dim,
        "vocab": hf_config.vocab_size,
    }


def checkpoint_keys(model, config) -> list[tuple[str, tuple[int, ...], str]]:
    """Keys, shapes and dtypes of the SALMONN checkpoint entries of `model`, in state-dict order.

    The key set is that of `distill.modeling.salmonn.salmonn_checkpoint_keys(config)` (what a
    released checkpoint must hold: query tokens, the two LayerNorms, Q-Former attention /
    cross-attention / query FFN, projection, LoRA A/B), taken from the already built `model`
    through `critical_groups`. Without that module, SALMONN's save rule is applied: the state
    dict minus frozen parameters.
    """
    state = model.state_dict()
    try:
        from distill.modeling.salmonn import critical_groups
    except ImportError:
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        wanted = {k: tuple(v.shape) for k, v in state.items() if k not in frozen}
    else:
        wanted = {k: tuple(state[k].shape) for ks in critical_groups(model).values() for k in ks}
    order = [k for k in state if k in wanted] + [k for k in wanted if k not in state]
    return [
        (k, wanted[k], str(state[k].dtype).replace("torch.", "") if k in state else "")
        for k in order
    ]


def summarize(name: str, config, model=None, *, keys: bool = False) -> ModelSummary:
    """Build (on meta) and measure one model."""
    model = build_meta(config) if model is None else model
    llm = model.llama_model
    hf_config = llm.get_base_model().config if hasattr(llm, "get_base_model") else llm.config
    wcfg = model.speech_encoder.config
    notes = {
        "speech encoder": f"whisper d_model={wcfg.d_model}, {wcfg.encoder_layers} layers, "
        f"{wcfg.num_mel_bins} mels",
        "Q-Former": f"{config.qformer_layers} x {config.qformer_hidden}, "
        f"{config.num_speech_query_token} query / window",
        "projection": f"{config.qformer_hidden} -> {hf_config.hidden_size}",
        "LLM": f"{hf_config.model_type}, {hf_config.num_hidden_layers} layers",
    }
    if config.audio_encoder:
        notes["audio encoder"] = f"{config.audio_encoder}, d={model.ln_audio.normalized_shape[0]}"
    if config.lora:
        notes["LoRA"] = f"r={config.lora_rank} on {','.join(config.lora_targets)}"
    return ModelSummary(
        name=name,
        parts=count_parts(model),
        llm=llm_shape(hf_config),
        audio_tokens=model.num_windows(int(CLIP_SECONDS * SAMPLE_RATE)),
        keys=checkpoint_keys(model, config) if keys else None,
        notes=notes,
    )


# ------------------------------------------------------------------------- printing
def fmt_count(n: int) -> str:
    if n == 0:
        return "0"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)


def fmt_bytes(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def fmt_ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}x" if b else "-"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def format_summary(s: ModelSummary) -> str:
    rows = [["part", "params", "trainable", "fp32", "bf16/fp16", "what"]]
    for part, c in s.parts.items():
        if c.total or part in PARTS[:5]:
            rows.append(
                [part, fmt_count(c.total), fmt_count(c.trainable), fmt_bytes(4 * c.total),
                 fmt_bytes(2 * c.total), s.notes.get(part, "-" if not c.total else "")]
            )  # fmt: skip
    rows.append(["total", fmt_count(s.total), fmt_count(s.trainable), fmt_bytes(4 * s.total),
                 fmt_bytes(2 * s.total), ""])  # fmt: skip
    kv = f"{fmt_bytes(s.kv_bytes_per_token('bfloat16'))} bf16/fp16, {fmt_bytes(s.kv_bytes_per_token('float32'))} fp32"
    return (
        f"{s.name}\n{_table(rows)}\n"
        f"KV cache per token: {kv} ({s.llm['layers']} layers x {s.llm['kv_heads']} kv heads "
        f"x {s.llm['head_dim']} head dim)\n"
        f"audio tokens per {CLIP_SECONDS:.0f} s clip: {s.audio_tokens}"
    )


def format_compare(t: ModelSummary, s: ModelSummary) -> str:
    rows = [["", t.name, s.name, "ratio"]]
    for part in dict.fromkeys([*t.parts, *s.parts]):
        a, b = t.parts.get(part, PartCount()).total, s.parts.get(part, PartCount()).total
        if a or b:
            rows.append([f"{part} params", fmt_count(a), fmt_count(b), fmt_ratio(a, b)])
    rows += [
        ["total params", fmt_count(t.total), fmt_count(s.total), fmt_ratio(t.total, s.total)],
        ["trainable params", fmt_count(t.trainable), fmt_count(s.trainable),
         fmt_ratio(t.trainable, s.trainable)],
        ["weights bf16/fp16", fmt_bytes(2 * t.total), fmt_bytes(2 * s.total),
         fmt_ratio(t.total, s.total)],
        ["weights fp32", fmt_bytes(4 * t.total), fmt_bytes(4 * s.total),
         fmt_ratio(t.total, s.total)],
        ["KV cache / token bf16", fmt_bytes(t.kv_bytes_per_token()),
         fmt_bytes(s.kv_bytes_per_token()), fmt_ratio(t.kv_bytes_per_token(), s.kv_bytes_per_token())],
        ["LLM layers", str(t.llm["layers"]), str(s.llm["layers"]),
         fmt_ratio(t.llm["layers"], s.llm["layers"])],
        ["LLM hidden", str(t.llm["hidden"]), str(s.llm["hidden"]),
         fmt_ratio(t.llm["hidden"], s.llm["hidden"])],
        ["vocab", str(t.llm["vocab"]), str(s.llm["vocab"]), fmt_ratio(t.llm["vocab"], s.llm["vocab"])],
        [f"audio tokens / {CLIP_SECONDS:.0f} s", str(t.audio_tokens), str(s.audio_tokens),
         fmt_ratio(t.audio_tokens, s.audio_tokens)],
    ]  # fmt: skip
    return _table(rows) + "\nratio = left / right"


# ------------------------------------------------------------------------- placement
PLACEMENTS = ("replicated", "sharded")


def placement_memory(teacher: ModelSummary, student: ModelSummary, gpus: int) -> list[dict]:
    """Per-GPU bytes of a frozen teacher beside a student at `gpus` GPUs, by placement.

    Counted (activations and the CUDA context are not: they depend on batch, sequence
    and kernels):
        teacher weights, bf16, no gradients, no optimizer state (frozen, eval mode);
        student weights in fp32 (Accelerate keeps fp32 master weights under bf16 autocast),
        its trainable parameters' fp32 gradients and AdamW's two fp32 moments.
    Placements:
        replicated  the teacher whole on every GPU, the student under DDP (whole too);
        sharded     teacher and student under FSDP FULL_SHARD / ZeRO-3: every tensor
                    divided by `gpus`, plus the largest unit gathered at a time (one LLM
                    decoder layer of the teacher, bf16).
    """
    if gpus < 1:
        raise ValueError(f"--gpus must be >= 1, got {gpus}")
    t_weights = 2 * teacher.total
    s_weights = 4 * student.total
    s_states = (4 + 8) * student.trainable  # fp32 grads + AdamW exp_avg, exp_avg_sq
    llm = teacher.parts.get("LLM", PartCount()).total
    layer = 2 * llm // max(int(teacher.llm.get("layers") or 1), 1)
    rows = []
    for placement in PLACEMENTS:
        div = gpus if placement == "sharded" else 1
        gather = layer if placement == "sharded" and gpus > 1 else 0
        row = {
            "placement": placement,
            "gpus": gpus,
            "teacher_weights": t_weights / div + gather,
            "student_weights": s_weights / div,
            "student_grads_and_adam": s_states / div,
        }
        row["total"] = (
            row["teacher_weights"] + row["student_weights"] + row["student_grads_and_adam"]
        )
        rows.append(row)
    return rows


def format_placement(teacher: ModelSummary, student: ModelSummary, gpus: int) -> str:
    rows = [["placement (per GPU)", "teacher bf16", "student fp32", "grads + AdamW",
             "total", "fits 24 / 40 / 80 GiB"]]  # fmt: skip
    for r in placement_memory(teacher, student, gpus):
        fits = " / ".join("yes" if r["total"] <= g * 1024**3 else "no" for g in (24, 40, 80))
        rows.append([f"{r['placement']} x {gpus}", fmt_bytes(r["teacher_weights"]),
                     fmt_bytes(r["student_weights"]), fmt_bytes(r["student_grads_and_adam"]),
                     fmt_bytes(r["total"]), fits])  # fmt: skip
    return (
        f"teacher {teacher.name} beside student {student.name} on {gpus} GPU(s)\n"
        + _table(rows)
        + "\nweights, gradients and optimizer states only (activations excluded); sharded ="
        " FSDP FULL_SHARD / ZeRO-3, plus one gathered teacher decoder layer"
    )


def format_keys(s: ModelSummary) -> str:
    width = max((len(k) for k, _, _ in s.keys or []), default=0)
    lines = [f"{s.name}: {len(s.keys or [])} checkpoint keys"]
    lines += [f"{k.ljust(width)}  {tuple(shape)!s:>14}  {dt}" for k, shape, dt in s.keys or []]
    return "\n".join(lines)


# ------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", nargs="?", help="preset name (see --list) or config.json/.yaml or model dir"
    )
    parser.add_argument("--list", action="store_true", help="list the registered presets")
    parser.add_argument("--compare", metavar="OTHER", help="second model, printed side by side")
    parser.add_argument("--keys", action="store_true", help="list checkpoint keys and shapes")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument(
        "--gpus", type=int, default=None, metavar="N",
        help="with --compare: per-GPU memory of MODEL as a frozen teacher beside OTHER as "
        "the student, replicated (DDP) and sharded (FSDP / ZeRO-3), at N GPUs",
    )  # fmt: skip


def inspect(spec: str, *, keys: bool = False) -> ModelSummary:
    """Resolve `spec` (preset or file), build it on meta and summarize it."""
    return summarize(spec, resolve_config(spec), keys=keys)


def run(args: argparse.Namespace) -> int:
    if args.list or not args.model:
        print("\n".join(sorted(load_presets())))
        return 0
    summaries = [inspect(spec, keys=args.keys) for spec in (args.model, args.compare) if spec]
    if args.json:
        out: dict[str, Any] = {"models": [s.to_dict() for s in summaries]}
        if len(summaries) == 2:
            t, s = summaries
            out["ratios"] = {
                "total": t.total / s.total,
                "trainable": t.trainable / s.trainable if s.trainable else None,
                "kv_cache_per_token": t.kv_bytes_per_token() / s.kv_bytes_per_token(),
                "audio_tokens": t.audio_tokens / s.audio_tokens if s.audio_tokens else None,
            }
            if args.gpus:
                out["placement"] = placement_memory(t, s, args.gpus)
        print(json.dumps(out, indent=2))
        return 0
    blocks = [format_summary(s) for s in summaries]
    if len(summaries) == 2:
        blocks.append(format_compare(*summaries))
        if args.gpus:
            blocks.append(format_placement(*summaries, args.gpus))
    elif args.gpus:
        raise SystemExit("--gpus needs --compare STUDENT (the teacher is MODEL)")
    if args.keys:
        blocks += [format_keys(s) for s in summaries]
    print("\n\n".join(blocks))
    return 0
