"""What the two caches (`distill.cache`, the teacher's logits; `distill.pseudo`, its
answers) share: the error they raise, checksums, atomic index writes and the ids hash."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from distill.errors import DistillError


class CacheError(DistillError, RuntimeError):
    """The cache is missing, incomplete, corrupt, or does not match the request."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".json.part")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def ids_sha(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
