"""Atomic, resumable training checkpoints.

Layout of `OUTPUT/checkpoints/step_000123/`:
    model.safetensors     trainable student parameters + buffers, and the losses' state
                          (learned bridges, DDAT's EMA, schedule counters), prefixed
                          "student." and "loss."
    optimizer.pt          optimizer state (tensors only; loads with weights_only=True)
    rng_rank{r}.pt        torch / CUDA RNG state of each process
    state.json            step, epoch, sampler state, scheduler state, Python/NumPy RNG

Every checkpoint is written into `step_000123.tmp/` and renamed into place only when
complete, so a kill mid-save leaves the previous checkpoint intact. `latest` is found
by listing complete `step_*` directories; half-written `.tmp` dirs are ignored and
cleaned up.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from distill.modeling.checkpoint import read_tensors

STEP_DIR = re.compile(r"^step_(\d+)$")


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".part")
    tmp.write_text(text)
    os.replace(tmp, path)


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step_{step:06d}"


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found) if (p / "state.json").is_file()]


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def rng_state() -> dict[str, Any]:
    """Python and NumPy RNG state, JSON-serialisable."""
    py = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [
            np_state[0],
            np_state[1].tolist(),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))


def torch_rng_state() -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_torch_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def begin_save(root: str | Path, step: int) -> Path:
    """Create (fresh) the temporary directory a checkpoint is written into."""
    tmp = step_dir(root, step).with_name(f"step_{step:06d}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def write_rank_rng(tmp: Path, rank: int) -> None:
    torch.save(torch_rng_state(), tmp / f"rng_rank{rank}.pt")


def write_main(
    tmp: Path,
    *,
    tensors: dict[str, torch.Tensor],
    optimizer_state: dict,
    state: dict[str, Any],
) -> None:
    # clone: tied weights (embeddings = lm_head) share storage, which safetensors refuses
    save_file({k: v.detach().cpu().clone() for k, v in tensors.items()}, tmp / "model.safetensors")
    torch.save(optimizer_state, tmp / "optimizer.pt")
    # state.json is written last: its presence marks the directory complete.
    _atomic_write_text(tmp / "state.json", json.dumps(state, indent=1))


def finish_save(root: str | Path, step: int, keep_last: int | None = None) -> Path:
    """Rename the finished temp dir into place and prune old checkpoints."""
    final = step_dir(root, step)
    tmp = final.with_name(final.name + ".tmp")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep_last:
        for old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    for stale in Path(root).glob("step_*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path, rank: int = 0) -> dict[str, Any]:
    """Read a checkpoint back; names the file on any problem."""
    path = Path(path)
    required = ["state.json", "model.safetensors", "optimizer.pt"]
    missing = [name for name in required if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(f"checkpoint {path} is incomplete: missing {missing}")
    out: dict[str, Any] = {"path": path}
    out["state"] = json.loads((path / "state.json").read_text())
    out["tensors"] = read_tensors(path / "model.safetensors", what="training checkpoint")
    out["optimizer"] = read_tensors(path / "optimizer.pt", what="optimizer state")
    rng_file = path / f"rng_rank{rank}.pt"
    out["torch_rng"] = read_tensors(rng_file, what="RNG state") if rng_file.is_file() else None
    return out
