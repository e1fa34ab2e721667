"""The demo's data: the synthetic corpus, two tokenizers, and the labelled subset.

Step 1 of the demo. The corpus is espeak-ng speech with known transcripts plus procedural
sounds with templated captions (`distill.data.synth`). Two byte-level BPEs of different
sizes stand in for a Llama-family teacher and a Qwen-family student: different ids and
merges, so the cross-tokenizer machinery is exercised. The labelled subset is what the
students may see of the train labels (`DemoConfig.student_label_fraction`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distill.data.annotations import Item, read_annotations, write_annotations
from distill.demo.config import DemoConfig


def make_data(cfg: DemoConfig) -> dict[str, str]:
    """Build (or reuse) corpus, tokenizers and label split.

    Returns:
        paths: "train", "valid", "test", "testset" (corpus files), "labelled" and
        "unlabelled" (the students' split of train), "texts" (train texts for the LMs),
        "teacher_tokenizer", "student_tokenizer".
    """
    from distill.data.synth import make_corpus
    from distill.modeling.tokenizers import train_tiny_tokenizer

    out = Path(cfg.out_dir)
    paths = dict(
        make_corpus(
            out / "data", seed=cfg.seed, n_speech=cfg.n_speech, n_sounds=cfg.n_sounds, **cfg.corpus
        )
    )
    train = read_annotations(paths["train"])
    texts = train_texts(train)
    for role, size in (("teacher", 384), ("student", 512)):
        tok_dir = out / "tokenizers" / f"{role}-bpe{size}"
        if not (tok_dir / "tokenizer.json").is_file():
            train_tiny_tokenizer(
                tok_dir, flavor="bpe", texts=texts, vocab_size=size, prefix_space=True
            )
        paths[f"{role}_tokenizer"] = str(tok_dir)
    labelled, unlabelled = label_split(train, cfg.student_label_fraction, cfg.seed)
    split_dir = out / "data" / f"labels-{cfg.student_label_fraction:g}"
    paths["labelled"] = write_annotations(labelled, split_dir / "labelled.json")
    paths["unlabelled"] = write_annotations(unlabelled, split_dir / "unlabelled.json")
    return paths


def train_texts(items: list[Item]) -> list[str]:
    """Every distinct target text and reference of the train split, in order (LM pretraining)."""
    return list(dict.fromkeys(t for it in items for t in (it.text, *it.references) if t))


def label_split(items: list[Item], fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
    """A seeded share of each task's items keeps its labels; the rest are unlabelled.

    Stratified by task so that ASR and captioning keep their proportions; at least one
    item of each task stays labelled.
    """
    rng = np.random.default_rng([seed, 17])
    labelled: list[Item] = []
    unlabelled: list[Item] = []
    for task in dict.fromkeys(it.task for it in items):
        group = [it for it in items if it.task == task]
        k = max(1, int(round(fraction * len(group))))
        keep = set(rng.permutation(len(group))[:k].tolist())
        for i, it in enumerate(group):
            (labelled if i in keep else unlabelled).append(it)
    return labelled, unlabelled
