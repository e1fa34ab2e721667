"""The teacher-signal cache: run the teacher once, replay sparse top-k signals.

Layout of a cache directory:
    index.json              version, teacher description, k, hidden states, tokenizer
                            identity, item count, and one entry per shard
                            (file, ids, sha256); `complete` once every item is in
    tokenizer_pieces.json   the teacher tokenizer's pieces (for cross-tokenizer losses)
    shard_00000.safetensors per item i of the shard: `{i}.topk_values` [n, k] fp16,
                            `{i}.topk_indices` [n, k] int32, `{i}.token_ids` [n] int32,
                            `{i}.offsets` [n, 2] int32, `{i}.logsumexp` [n] fp32 and the
                            requested hidden states (fp16), `{i}.qformer_mask` [w] uint8

Items are processed in annotation order; shard j holds items [j*S, (j+1)*S). Each shard
and then the index are written atomically, so an interrupted run resumes at the first
missing shard. `verify_cache` re-hashes every shard and checks counts and ids.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from distill._shards import (
    CacheError,
    add_shard,
    atomic_json,
    check_shards,
    ids_sha,
    open_index,
)
from distill.contracts import TeacherSignals

CACHE_VERSION = 1
HIDDEN_NAMES = ("llm_hidden", "qformer", "speech", "audio")


def item_tensors(signals: TeacherSignals, i: int) -> dict[str, torch.Tensor]:
    """The cached tensors of batch item `i`, trimmed to its answer length."""
    if not signals.is_sparse:
        raise CacheError("cache expects sparse top-k signals; build the teacher with topk=K")
    n = int(signals.mask[i].sum())
    out = {
        "topk_values": signals.topk_values[i, :n].to(torch.float16),
        "topk_indices": signals.topk_indices[i, :n].to(torch.int32),
        "token_ids": signals.token_ids[i, :n].to(torch.int32),
    }
    if signals.offsets is not None:
        out["offsets"] = signals.offsets[i, :n].to(torch.int32)
    if signals.logsumexp is not None:
        out["logsumexp"] = signals.logsumexp[i, :n].float()
    if signals.llm_hidden is not None:
        out["llm_hidden"] = signals.llm_hidden[i, :n].to(torch.float16)
    for name in ("qformer", "speech", "audio"):
        x = getattr(signals, name)
        if x is not None:
            out[name] = x[i].to(torch.float16)
    if signals.qformer_mask is not None:
        out["qformer_mask"] = signals.qformer_mask[i].to(torch.uint8)
    return {k: v.detach().contiguous().cpu() for k, v in out.items()}


def build_cache(
    teacher,
    items: list,
    out_dir: str | Path,
    *,
    topk: int = 64,
    batch_size: int = 8,
    shard_size: int = 256,
    description: str = "",
    progress: bool = True,
) -> Path:
    """Run `teacher.signals` over `items` once and write the shards (resumable).

    Args:
        teacher: object with `signals(batch)`; its `topk` attribute, when present, is set to `topk`.
        items: annotation items (`distill.data` Items) in a fixed order.
        out_dir: cache directory (created; an existing partial cache is resumed).
        topk: logits kept per position (fp16 values, int32 indices).
        batch_size: teacher batch size.
        shard_size: items per shard (must be a multiple of batch_size to keep shards aligned).
    """
    from tqdm.auto import tqdm

    from distill.data.dataset import AudioDataset, collate

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if shard_size % batch_size:
        raise ValueError(f"shard_size {shard_size} must be a multiple of batch_size {batch_size}")
    if hasattr(teacher, "topk"):
        teacher.topk = topk
    request = {
        "topk": topk,
        "num_items": len(items),
        "shard_size": shard_size,
        "ids_sha": ids_sha([it.id for it in items]),
    }
    header = {"version": CACHE_VERSION, "teacher": description}
    index_path, index, done = open_index(out, [it.id for it in items], request, header, "logits")
    num_shards = (len(items) + shard_size - 1) // shard_size
    bar = tqdm(total=len(items), desc="teacher cache", unit="item", disable=not progress)
    bar.update(sum(len(s["ids"]) for s in index["shards"]))
    for j in range(num_shards):
        name = f"shard_{j:05d}.safetensors"
        if name in done:
            continue
        chunk = items[j * shard_size : (j + 1) * shard_size]
        tensors: dict[str, torch.Tensor] = {}
        for start in range(0, len(chunk), batch_size):
            sub = chunk[start : start + batch_size]
            # every cached item must load: a bad file is an error here, not a silent skip
            loader = AudioDataset(sub, require_text=False)
            batch = collate([loader.load(i) for i in range(len(sub))])
            with torch.no_grad():
                signals = teacher.signals(batch)
            if signals.ids is not None and list(signals.ids) != [it.id for it in sub]:
                raise CacheError("teacher returned signals for different ids than the batch")
            _remember_tokenizer(out, index, signals)
            for i in range(len(sub)):
                for key, value in item_tensors(signals, i).items():
                    tensors[f"{start + i}.{key}"] = value
            bar.update(len(sub))
        tmp = out / (name + ".part")
        save_file(tensors, tmp)
        add_shard(index_path, index, tmp, name, [it.id for it in chunk])
    bar.close()
    index["complete"] = True
    atomic_json(index_path, index)
    verify_cache(out)
    return out


def _remember_tokenizer(out: Path, index: dict, signals: TeacherSignals) -> None:
    info = signals.tokenizer
    if "vocab_size" not in index:
        index["vocab_size"] = int(signals.vocab_size)
        index["hidden"] = [h for h in HIDDEN_NAMES if getattr(signals, h) is not None]
    if info is not None and "tokenizer" not in index:
        index["tokenizer"] = {"name": info.name, "fingerprint": info.fingerprint}
        atomic_json(out / "tokenizer_pieces.json", list(info.pieces))


def verify_cache(cache_dir: str | Path) -> dict[str, Any]:
    """Check completeness, counts, ids and checksums; raise `CacheError` naming the problem."""
    root = Path(cache_dir)
    index_path = root / "index.json"
    if not index_path.is_file():
        raise CacheError(f"{root} is not a teacher cache: no index.json")
    index = json.loads(index_path.read_text())
    if not index.get("complete"):
        raise CacheError(
            f"{root} is incomplete: rerun `distill cache` with the same arguments to resume"
        )
    check_shards(root, index)
    return index


# ---- CLI --------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--teacher",
        required=True,
        help="AudioLLM dir (save_pretrained) or recipe YAML with a `teacher:` node",
    )
    parser.add_argument("--data", required=True, nargs="+", help="SALMONN annotation JSON file(s)")
    parser.add_argument("--out", required=True, help="cache directory (resumed if it exists)")
    parser.add_argument("--topk", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--hidden", nargs="*", default=[], choices=list(HIDDEN_NAMES))
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="float32")
    pl = parser.add_argument_group(
        "pseudo-labels (sequence-level KD)",
        "--pseudo-labels stores the teacher's decoded answers and their mean token "
        "log-probability instead of logits (distill.pseudo), then writes "
        "<out>/pseudo_labels.json: the answers that pass the filter (WER <= --max-wer "
        "against an item's own text where it has one, log-prob >= --min-logprob where it "
        "has none), with pseudo_labels.stats.json (kept, dropped, why). --data may be "
        "audio-only manifests (no text).",
    )
    pl.add_argument("--pseudo-labels", action="store_true")
    pl.add_argument("--decode", default="greedy", help="decode preset (greedy | salmonn)")
    pl.add_argument("--max-new-tokens", type=int, default=None)
    pl.add_argument("--max-wer", type=float, default=0.10, help="distil-whisper's 10 %% rule")
    pl.add_argument("--min-logprob", type=float, default=None)


def run(args: argparse.Namespace) -> int:
    import yaml

    from distill._instantiate import instantiate
    from distill.data.annotations import read_annotations

    items = [it for path in args.data for it in read_annotations(path)]
    teacher_path = Path(args.teacher)
    if not teacher_path.exists():
        raise SystemExit(f"--teacher {teacher_path} does not exist")
    if teacher_path.suffix in (".yaml", ".yml"):
        node = (yaml.safe_load(teacher_path.read_text()) or {}).get("teacher")
        if not node:
            raise SystemExit(f"{teacher_path}: no `teacher:` component node")
        teacher = instantiate(node, config_key="teacher")
    else:
        teacher = instantiate(
            {
                "_component_": "teachers.AudioLLMTeacher",
                "path": str(teacher_path),
                "dtype": args.dtype,
                "device": args.device,
            }
        )
    if getattr(args, "pseudo_labels", False):
        return _run_pseudo(args, items, teacher)
    if hasattr(teacher, "hidden"):
        teacher.hidden = tuple(args.hidden)
    out = build_cache(
        teacher,
        items,
        args.out,
        topk=args.topk,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        description=str(args.teacher),
    )
    print(f"cache written and verified: {out}")
    return 0


def _run_pseudo(args: argparse.Namespace, items: list, teacher) -> int:
    from distill.pseudo import build_pseudo_cache, write_pseudo_labels

    model = getattr(teacher, "model", teacher)
    if not hasattr(model, "generate"):
        raise SystemExit(
            f"--pseudo-labels needs a teacher model that generates, got {type(model).__name__}"
        )
    out = build_pseudo_cache(
        model,
        items,
        args.out,
        decode=args.decode,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        description=str(args.teacher),
    )
    manifest, stats = write_pseudo_labels(
        items, out, Path(args.out) / "pseudo_labels.json", max_wer=args.max_wer,
        min_logprob=args.min_logprob,
    )  # fmt: skip
    print(
        f"pseudo-labels cached and verified: {out}; kept {stats.kept}/{stats.items} "
        f"(dropped: {stats.dropped_empty} empty, {stats.dropped_wer} over WER "
        f"{args.max_wer:.0%}, {stats.dropped_logprob} under log-prob {args.min_logprob}) -> "
        f"{manifest}"
    )
    return 0
