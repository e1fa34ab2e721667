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


def open_index(
    out: Path, ids: list[str], request: dict[str, Any], header: dict[str, Any], what: str
) -> tuple[Path, dict[str, Any], set[str]]:
    """Start or resume a sharded cache in `out`.

    Checks that `ids` are unique, reads `out/index.json` if it exists and refuses one made
    for another `request` (the index keeps the request's fields), and drops the shards
    whose file is missing or fails its checksum, so they are redone. Returns (index path,
    index, names of the intact shards). `what` names the cache in the errors.
    """
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise CacheError(f"item ids must be unique to cache {what} in {out}; duplicates: {dupes}")
    index_path = out / "index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else None
    if index is not None and any(index.get(k) != v for k, v in request.items()):
        raise CacheError(
            f"{index_path} was built for a different request "
            f"({ {k: index.get(k) for k in request} } vs {request}); use a new --out directory"
        )
    if index is None:
        index = {**header, **request, "shards": [], "complete": False}
    done = {
        s["file"]
        for s in index["shards"]
        if (out / s["file"]).is_file() and sha256_file(out / s["file"]) == s["sha256"]
    }
    index["shards"] = [s for s in index["shards"] if s["file"] in done]
    return index_path, index, done


def add_shard(
    index_path: Path, index: dict[str, Any], tmp: Path, name: str, ids: list[str]
) -> None:
    """Move a fully written `tmp` into place as shard `name`, then record it in the index."""
    final = index_path.parent / name
    os.replace(tmp, final)
    index["shards"].append({"file": name, "ids": list(ids), "sha256": sha256_file(final)})
    index["shards"].sort(key=lambda s: s["file"])
    atomic_json(index_path, index)


def check_shards(root: Path, index: dict[str, Any]) -> list[Path]:
    """Shard paths of a complete index whose ids match its request and whose files are
    intact; raises `CacheError` naming `root` and the problem."""
    ids = [i for s in index["shards"] for i in s["ids"]]
    if len(ids) != index["num_items"]:
        raise CacheError(f"{root}: index lists {len(ids)} items, expected {index['num_items']}")
    if len(set(ids)) != len(ids):
        raise CacheError(f"{root}: duplicate ids in the index")
    if ids_sha(ids) != index["ids_sha"]:
        raise CacheError(f"{root}: item ids/order do not match the request recorded in index.json")
    paths = []
    for shard in index["shards"]:
        path = root / shard["file"]
        if not path.is_file():
            raise CacheError(f"{root}: shard {shard['file']} is missing")
        if sha256_file(path) != shard["sha256"]:
            raise CacheError(f"{root}: shard {shard['file']} is corrupt (checksum mismatch)")
        paths.append(path)
    return paths
