"""Checkpoint and config helpers shared by the BEATs and CED encoders.

Strict key matching with errors that name keys and file, and typed config parsing. Kept
apart from the factory (`audio_encoder.py`) so that `beats.py` and `ced.py` import these
without importing the factory that imports them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from distill._instantiate import ConfigError

# CheckpointError is imported from here by beats.py, ced.py and callers; one class for both
from distill.modeling.checkpoint import CheckpointError, key_problems, read_tensors

__all__ = ["CheckpointError", "load_strict", "read_state_file", "typed_kwargs"]

_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def typed_kwargs(cls: type, cfg: Mapping[str, Any], what: str, *, unknown: str = "raise") -> dict:
    """Check `cfg` against the annotated fields of dataclass `cls` (int/float/bool/str).

    Args:
        unknown: "raise" on keys `cls` lacks, or "keep" to return them under "extra".

    Raises:
        ConfigError: naming the field, the expected type and the value.
    """
    fields = {f.name: str(f.type) for f in dataclasses.fields(cls) if f.name != "extra"}
    out: dict[str, Any] = {"extra": {}} if unknown == "keep" else {}
    for key, value in cfg.items():
        if key not in fields:
            if unknown != "keep":
                raise ConfigError(f"{what}: unknown field {key!r}; known: {', '.join(fields)}")
            out["extra"][key] = value
            continue
        want = _TYPES[fields[key]]
        if not isinstance(value, want) or (bool not in want and isinstance(value, bool)):
            raise ConfigError(
                f"{what} field {key!r} must be {fields[key]}, got {value!r} ({type(value).__name__})"
            )
        out[key] = float(value) if fields[key] == "float" else value
    return out


def read_state_file(path: str | os.PathLike) -> Any:
    """Read a torch pickle (`weights_only=True`) or a safetensors file from `path`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    return read_tensors(path, what="audio encoder checkpoint")


def load_strict(module: nn.Module, state: Mapping[str, Tensor], path: str, what: str) -> None:
    """Load `state` into `module` with exact key and shape matching.

    Raises:
        CheckpointError: naming the missing, unexpected and mis-shaped keys and the file.
    """
    problems = key_problems(module.state_dict(), state)
    if problems:
        raise CheckpointError(
            f"{what} checkpoint {path} does not match the configured architecture: "
            + " | ".join(problems)
        )
    module.load_state_dict(dict(state), strict=True)
