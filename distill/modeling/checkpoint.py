"""Our own `AudioLLM` checkpoint format: a self-contained directory.

    <dir>/model.safetensors   weights (see below)
    <dir>/config.json         {"format": "distill.audio_llm", "version": 1, "config": {...}, ...}
    <dir>/tokenizer/          the model's tokenizer (so the dir needs nothing else)

`trainable_only=True` (default) stores the trainable parameters, every persistent
buffer, and the frozen parameters of any part that was randomly initialised (no
whisper_path / audio_encoder_path / llm_path to rebuild it from). Frozen parts with a
path are rebuilt from that path on load. `trainable_only=False` stores everything.
Every file is written to a temporary name and moved into place with `os.replace`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

FORMAT = "distill.audio_llm"
VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER = "tokenizer"

# Module prefix -> config field naming the path its weights come from.
SOURCE_OF = {
    "speech_encoder.": "whisper_path",
    "beats.": "audio_encoder_path",
    "llama_model.": "llm_path",
}


class CheckpointError(ValueError):
    """A checkpoint does not fit the model it is loaded into."""


def rebuildable_keys(model) -> set[str]:
    """State-dict keys of frozen parameters whose part is rebuilt from a path on load."""
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    out = set()
    for name in frozen:
        for prefix, field in SOURCE_OF.items():
            if name.startswith(prefix) and getattr(model.config, field) is not None:
                out.add(name)
    return out


def checkpoint_state(model, trainable_only: bool = True) -> dict[str, Tensor]:
    """The tensors `save_pretrained` writes (shared storage is un-shared by cloning)."""
    state = model.state_dict()
    if trainable_only:
        skip = rebuildable_keys(model)
        state = {k: v for k, v in state.items() if k not in skip}
    seen, out = set(), {}
    for k, v in state.items():
        v = v.detach()
        ptr = (v.untyped_storage().data_ptr(), v.storage_offset())
        out[k] = v.clone().contiguous() if ptr in seen else v.contiguous()
        seen.add(ptr)
    return out


def save_pretrained(model, path: str | os.PathLike, *, trainable_only: bool = True) -> None:
    """Write the model's checkpoint dir (atomic per file)."""
    if getattr(model, "meta", False):
        raise CheckpointError("a meta-device AudioLLM has no weights to save")
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    state = {k: v.cpu() for k, v in checkpoint_state(model, trainable_only).items()}
    _atomic(path, WEIGHTS, lambda tmp: save_file(state, tmp, metadata={"format": FORMAT}))
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "trainable_only": trainable_only,
        "num_tensors": len(state),
        "config": model.config.to_dict(),
    }
    _atomic(path, CONFIG, lambda tmp: _write_json(tmp, meta))
    if model.tokenizer is not None:
        tmp_dir = tempfile.mkdtemp(prefix=".tokenizer-", dir=path)
        model.tokenizer.save_pretrained(tmp_dir)
        final = os.path.join(path, TOKENIZER)
        old = None
        if os.path.exists(final):
            old = final + f".old-{os.getpid()}"
            os.replace(final, old)
        os.replace(tmp_dir, final)
        if old:
            shutil.rmtree(old, ignore_errors=True)


def read_config(path: str | os.PathLike):
    """The `AudioLLMConfig` stored in a checkpoint dir (tokenizer_path -> its tokenizer/)."""
    from distill.modeling.config import AudioLLMConfig

    path = os.fspath(path)
    cfg_file = os.path.join(path, CONFIG)
    if not os.path.isfile(cfg_file):
        raise FileNotFoundError(
            f"no {CONFIG} in checkpoint dir {path!r} (was it written by save_pretrained?)"
        )
    with open(cfg_file, encoding="utf-8") as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{cfg_file} is not a {FORMAT} checkpoint (format={meta.get('format')!r})"
        )
    config = AudioLLMConfig.from_dict(meta["config"])
    tok_dir = os.path.join(path, TOKENIZER)
    if os.path.isdir(tok_dir):
        config = config.replace(tokenizer_path=tok_dir)
    return config


def from_pretrained(path: str | os.PathLike, *, device=None):
    """Rebuild an `AudioLLM` from its checkpoint dir and load the weights."""
    from distill.modeling.audio_llm import AudioLLM

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint dir not found: {path!r}")
    weights = os.path.join(path, WEIGHTS)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"no {WEIGHTS} in checkpoint dir {path!r}")
    model = AudioLLM(read_config(path))
    load_weights(model, weights)
    if device is not None:
        model.to(device)
    return model


def load_weights(model, weights: str | os.PathLike) -> None:
    """Load a `model.safetensors` into a built model, checking every key and shape."""
    weights = os.fspath(weights)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"checkpoint weights not found: {weights!r}")
    load_checked(model, load_file(weights), source=weights, allowed_missing=rebuildable_keys(model))


def load_checked(
    model, state: dict[str, Tensor], *, source: str, allowed_missing: set[str]
) -> None:
    """`load_state_dict` that first names every unexpected, missing or mis-shaped key."""
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state) - allowed_missing)
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(state) & set(own))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    for title, items in (
        ("shape mismatches", shapes),
        ("missing keys", missing),
        ("unexpected keys", unexpected),
    ):
        if items:
            shown = "\n    ".join(items[:25]) + (
                f"\n    ... and {len(items) - 25} more" if len(items) > 25 else ""
            )
            problems.append(f"  {len(items)} {title}:\n    {shown}")
    if problems:
        raise CheckpointError(
            f"checkpoint {source} does not fit AudioLLM {model.config.name!r} "
            f"(a different architecture or config?):\n" + "\n".join(problems)
        )
    with torch.no_grad():
        model.load_state_dict(state, strict=False)


def _atomic(directory: str, name: str, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, os.path.join(directory, name))
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _write_json(path: str, obj: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
