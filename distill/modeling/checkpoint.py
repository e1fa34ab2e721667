"""Our own `AudioLLM` checkpoint format: a self-contained directory.

    <dir>/model.safetensors   weights (see below)
    <dir>/config.json         {"format": "distill.audio_llm", "version": 1, "config": {...}, ...}
    <dir>/tokenizer/          the model's tokenizer (so the dir needs nothing else)

`trainable_only=True` (default) stores the trainable parameters, every persistent
buffer, and the frozen parameters of any part that was randomly initialised (no
whisper_path / audio_encoder_path / llm_path to rebuild it from). Frozen parts with a
path are rebuilt from that path on load. `trainable_only=False` stores everything.
Every file is written to a temporary name and moved into place with `os.replace`.

Every `.pth`/`.pt`/`.safetensors` that `distill` reads goes through `read_tensors` (or
`open_safetensors`): a truncated or corrupt file is a `CheckpointError` that names the
file and says what is wrong with it. Key lists in errors (`describe_keys`) are complete,
grouped by module and counted, on one line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence, Set
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from distill.errors import DistillError

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


# safetensors refuses headers above 100 MB; a larger length means the file is not safetensors
_MAX_HEADER = 100_000_000
_ZIP_MAGIC = b"PK\x03\x04"


# Both bases: the encoder loaders raised a RuntimeError, the AudioLLM loaders a ValueError.
class CheckpointError(DistillError, ValueError, RuntimeError):
    """A checkpoint file is unreadable, or does not fit the model it is loaded into."""


def read_tensors(path: str | os.PathLike, *, what: str = "checkpoint") -> Any:
    """Read a `.safetensors` file, or a torch pickle with `weights_only=True`, onto the CPU.

    Args:
        path: the file; `.safetensors` by name, anything else is a `torch.save` file.
        what: what the file is, for the messages ("SALMONN checkpoint", ...).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: naming the file and what is wrong: empty, truncated, another
            format than its name says, a bad safetensors header, or a pickle that needs
            objects `weights_only=True` forbids (never unpickled).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        if path.endswith(".safetensors"):
            return load_file(path, device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch and safetensors fail with many unrelated types
        raise CheckpointError(f"cannot read {what} {path}: {_diagnose(path, err)}") from err


def open_safetensors(path: str | os.PathLike, *, what: str = "safetensors file"):
    """`safe_open(path)` (lazy, per tensor) whose failure names the file and the problem."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return safe_open(path, framework="pt")
    except Exception as err:
        raise CheckpointError(f"cannot read {what} {path}: {_diagnose(path, err)}") from err


def _diagnose(path: str, err: Exception) -> str:
    """What is wrong with an unreadable tensor file, found from its bytes."""
    size = os.path.getsize(path)
    if size == 0:
        return "the file is empty (0 bytes)"
    with open(path, "rb") as f:
        head = f.read(8)
    if path.endswith(".safetensors"):
        if head[:4] == _ZIP_MAGIC:
            return "it is a torch.save zip archive, not safetensors (name it .pt)"
        return _safetensors_problem(path, size) or f"bad safetensors file ({_first_line(err)})"
    if head[:4] == _ZIP_MAGIC:
        return _zip_problem(path, size, err)
    if _safetensors_problem(path, size) is None:
        return "it is a safetensors file, not a torch pickle (name it .safetensors)"
    if head[:1] == b"\x80":  # pickle protocol >= 2: the legacy (pre-zip) torch.save format
        # weights_only allows torch's own globals, so a refused `torch.` one is a cut-off name
        cut = re.search(r"GLOBAL torch\.", str(err)) is not None
        if isinstance(err, EOFError) or cut or "truncated" in str(err).lower():
            return f"truncated or corrupt: a legacy torch pickle of {size} bytes that breaks off"
        if "weights_only" in str(err).lower():
            return _unsafe(err)
        return f"unreadable legacy torch pickle ({_first_line(err)})"
    return f"not a torch checkpoint: neither a zip archive nor a pickle (starts with {head!r})"


def _safetensors_problem(path: str, size: int) -> str | None:
    """None for a well-formed safetensors layout, else what breaks it."""
    if size < 8:
        return f"truncated or not safetensors: {size} bytes, fewer than the 8-byte header length"
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > _MAX_HEADER:
            return f"not a safetensors file: its first 8 bytes give a header length of {n}"
        if n > size - 8:
            return f"truncated: the header needs {n} bytes, only {size - 8} follow the length"
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except ValueError as err:  # UnicodeDecodeError and JSONDecodeError
        return f"bad safetensors header: not JSON ({err})"
    if not isinstance(header, dict):
        return f"bad safetensors header: a JSON {type(header).__name__}, not an object"
    try:
        end = max(
            (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
            default=0,
        )
    except (TypeError, KeyError, IndexError, ValueError):
        return "bad safetensors header: a tensor entry without data_offsets"
    if size < 8 + n + end:
        return f"truncated: {size} bytes, the header describes {8 + n + end}"
    return None


def _zip_problem(path: str, size: int, err: Exception) -> str:
    if not zipfile.is_zipfile(path):
        return f"truncated: a torch.save zip archive cut off at {size} bytes (no central directory)"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as zip_err:
        return f"corrupt torch.save zip archive ({zip_err})"
    if bad is not None:
        return f"corrupt: zip member {bad!r} fails its CRC check"
    if "weights_only" in str(err).lower():
        return _unsafe(err)
    return f"corrupt torch.save archive ({_first_line(err)})"


def _unsafe(err: Exception) -> str:
    lines = str(err).splitlines()
    said = next((ln.strip() for ln in lines if "WeightsUnpickler error" in ln), _first_line(err))
    return (
        "refusing to unpickle it: it holds objects that torch.load(weights_only=True) does not "
        "allow, and unpickling them could run arbitrary code. If you trust the file, re-save only "
        "its tensors in a separate trusted environment, e.g. "
        "torch.save({'model': torch.load(p, weights_only=False)['model']}, out), and load `out` "
        f"(torch said: {said})"
    )


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def group_keys(keys: Iterable[str]) -> dict[str, list[str]]:
    """Keys grouped by module: up to the first layer index, else the parent module.

    `blocks.2.attn.qkv.weight` -> `blocks.2`, `ln_speech.weight` -> `ln_speech`.
    """
    groups: dict[str, list[str]] = {}
    for key in sorted(keys):
        parts = key.split(".")
        cut = next((i + 1 for i, p in enumerate(parts) if p.isdigit()), max(len(parts) - 1, 1))
        groups.setdefault(".".join(parts[:cut]), []).append(key)
    return groups


def describe_keys(groups: Mapping[str, list[str]]) -> str:
    """Every key on one line, by group and counted: `ln_speech.* (2): ln_speech.bias, ...`."""
    out = []
    for prefix, keys in groups.items():
        star = ".*" if all(k.startswith(prefix + ".") for k in keys) else "*"
        out.append(
            keys[0] if len(keys) == 1 else f"{prefix}{star} ({len(keys)}): {', '.join(keys)}"
        )
    return "; ".join(out)


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


def from_pretrained(model_cls: type, path: str | os.PathLike, *, device=None):
    """Rebuild a `model_cls` (an `AudioLLM`) from its checkpoint dir and load the weights.

    The class is passed in, so this module never imports `audio_llm` (which imports it).
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint dir not found: {path!r}")
    weights = os.path.join(path, WEIGHTS)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"no {WEIGHTS} in checkpoint dir {path!r}")
    model = model_cls(read_config(path))
    load_weights(model, weights)
    if device is not None:
        model.to(device)
    return model


def load_weights(model, weights: str | os.PathLike) -> None:
    """Load a `model.safetensors` into a built model, checking every key and shape."""
    weights = os.fspath(weights)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"checkpoint weights not found: {weights!r}")
    state = read_tensors(weights, what="AudioLLM weights")
    load_checked(model, state, source=weights, allowed_missing=rebuildable_keys(model))


def inherit_weights(model, source: str | os.PathLike, parts: Sequence[str]) -> dict[str, int]:
    """Copy the teacher's trained `parts` into a student before training (weight inheritance).

    Distil-Whisper initialises its student from the teacher (the whole encoder, a subset of
    decoder layers); DistilBERT takes every other teacher layer. Here a part is a
    state-dict prefix (`speech_Qformer`, `speech_query_tokens`, `ln_speech`, ...) of a
    directory written by `save_pretrained`. Every tensor under a part must exist in
    `model` with the same shape: a student whose Q-Former reads other encoders (a different
    `encoder_width`) or is narrower cannot inherit it, and the error names every key that
    does not fit rather than copying a silent subset.

    Returns:
        part -> number of tensors copied.

    Raises:
        CheckpointError: a part matches nothing in `source`, or a key is missing or
            mis-shaped in `model` (each listed, with the file).
    """
    source = os.fspath(source)
    weights = os.path.join(source, WEIGHTS) if os.path.isdir(source) else source
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"inherit: no {WEIGHTS} at {source!r} (a save_pretrained dir?)")
    state = read_tensors(weights, what="AudioLLM weights to inherit")
    own = model.state_dict()
    counts, picked = {}, {}
    for part in parts:
        keys = [k for k in state if k == part or k.startswith(part + ".")]
        if not keys:
            known = ", ".join(sorted({k.split(".")[0] for k in state}))
            raise CheckpointError(
                f"inherit: part {part!r} has no tensors in {weights} (its parts: {known})"
            )
        counts[part] = len(keys)
        picked.update({k: state[k] for k in keys})
    problems = key_problems(own, picked) if picked else []
    missing_here = [k for k in picked if k not in own]
    mis = [k for k in picked if k in own and tuple(own[k].shape) != tuple(picked[k].shape)]
    if missing_here or mis:
        detail = [p for p in problems if not p.split(" ", 2)[1].startswith("missing")]
        raise CheckpointError(
            f"inherit: {weights} does not fit AudioLLM {model.config.name!r} for parts "
            f"{list(parts)} (a different width or other encoders?): " + " | ".join(detail)
        )
    with torch.no_grad():
        for k, v in picked.items():
            own[k].copy_(v.to(dtype=own[k].dtype))
    return counts


def key_problems(
    own: Mapping[str, Tensor], state: Mapping[str, Tensor], allowed_missing: Set[str] = frozenset()
) -> list[str]:
    """Every mis-shaped, missing and unexpected key of `state` against `own`, one entry per kind.

    Each entry is counted and lists every key, grouped by module (`describe_keys`); empty
    when `state` fits `own` exactly (up to `allowed_missing`).
    """
    unexpected = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state) - set(allowed_missing))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(state) & set(own))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches: {'; '.join(shapes)}")
    for title, keys in (("missing keys", missing), ("unexpected keys", unexpected)):
        if keys:
            problems.append(f"{len(keys)} {title}: {describe_keys(group_keys(keys))}")
    return problems


def load_checked(
    model, state: dict[str, Tensor], *, source: str, allowed_missing: set[str]
) -> None:
    """`load_state_dict` that first names every unexpected, missing or mis-shaped key."""
    problems = key_problems(model.state_dict(), state, allowed_missing)
    if problems:
        raise CheckpointError(
            f"checkpoint {source} does not fit AudioLLM {model.config.name!r} "
            f"(a different architecture or config?): " + " | ".join(problems)
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
