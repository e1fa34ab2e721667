"""Data: annotation files, audio I/O, datasets, sampling, summaries, synthetic corpora.

    from distill.data import AudioDataset, collate, read_annotations
    ds = AudioDataset(read_annotations("train.json")).validate()
    loader = DataLoader(ds, batch_sampler=make_sampler(ds.items, SamplingConfig()), collate_fn=collate)

The synthetic corpus lives in `distill.data.synth` (imported on demand: it forks workers).
"""

from __future__ import annotations

from distill.data.annotations import (
    AnnotationError,
    Item,
    read_annotations,
    write_annotations,
    write_testset,
)
from distill.data.audio import AudioError, AudioInfo, audio_info, load_audio, save_audio
from distill.data.dataset import AudioDataset, DataError, Example, collate
from distill.data.prompts import TASK_PROMPTS, prompt_for
from distill.data.sampling import (
    SamplingConfig,
    StratifiedBatchSampler,
    make_sampler,
    plan_stage,
    split_stages,
    text_strata,
    trim_by_length,
    weighted_items,
    with_replay,
)
from distill.data.summary import summarize, to_markdown

__all__ = [
    "TASK_PROMPTS",
    "AnnotationError",
    "AudioDataset",
    "AudioError",
    "AudioInfo",
    "DataError",
    "Example",
    "Item",
    "SamplingConfig",
    "StratifiedBatchSampler",
    "audio_info",
    "collate",
    "load_audio",
    "make_sampler",
    "plan_stage",
    "prompt_for",
    "read_annotations",
    "save_audio",
    "split_stages",
    "summarize",
    "text_strata",
    "to_markdown",
    "trim_by_length",
    "weighted_items",
    "with_replay",
    "write_annotations",
    "write_testset",
]
