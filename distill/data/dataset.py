"""A map-style dataset of annotated clips, bad-item accounting, and `collate`.

Glossary: b  batch items, s  waveform samples (16 kHz).

Bad items (missing file, unreadable audio, zero length, empty training text) are
skipped with a warning that names the file, and counted in `dataset.skipped`. When
more than `max_bad_fraction` of the items are bad the run stops with `DataError`
instead of training on garbage. `validate()` finds most bad items up front from the
headers alone (soundfile.info, no decoding); a file that only fails while decoding
is replaced by the next good item at load time, so batches keep their size.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset

from distill.contracts import SAMPLE_RATE, AudioBatch
from distill.data.annotations import Item, read_annotations
from distill.data.audio import AudioError, audio_info, load_audio
from distill.errors import DistillError

log = logging.getLogger(__name__)


class DataError(DistillError, RuntimeError):
    """Too much of the data is bad to train on, or no item is usable."""


@dataclass
class Example:
    """One loaded item. `waveform` is [s] float32 at 16 kHz."""

    id: str
    waveform: Tensor
    task: str
    prompt: str
    text: str
    references: tuple[str, ...] = ()


def _reason(err: AudioError) -> str:
    msg = str(err)
    if msg.startswith("audio file not found"):
        return "missing_file"
    if "zero length" in msg:
        return "zero_length"
    return "unreadable_audio"


class AudioDataset(Dataset):
    """Annotated clips loaded as 16 kHz mono waveforms.

    Args:
        items: items, or the path of an annotation file to read.
        require_text: training data: an empty "text" makes an item bad.
        max_bad_fraction: fail with `DataError` once more than this share is bad.
        max_seconds: cut clips after this many seconds (SALMONN: 30).
        min_seconds: pad clips to at least this long (SALMONN: 1).
        downmix: "first" (channel 0, SALMONN) or "mean".
        validate: run `validate()` now (header pass with a progress bar).
        progress: show the tqdm bar in `validate()`.
    """

    def __init__(
        self,
        items: Sequence[Item] | str | os.PathLike,
        *,
        require_text: bool = True,
        max_bad_fraction: float = 0.05,
        max_seconds: float = 30.0,
        min_seconds: float = 1.0,
        downmix: str = "first",
        validate: bool = False,
        progress: bool = True,
    ) -> None:
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
        if isinstance(items, (str, os.PathLike)):
            self.source = str(items)
            items = read_annotations(items)
        else:
            self.source = "<items>"
        self.items: list[Item] = list(items)
        self.total = len(self.items)
        self.require_text = require_text
        self.max_bad_fraction = max_bad_fraction
        self.load_kwargs = dict(max_seconds=max_seconds, min_seconds=min_seconds, downmix=downmix)
        self.progress = progress
        self.skipped: Counter[str] = Counter()
        self.skipped_paths: list[str] = []
        self._bad: set[int] = set()
        if validate:
            self.validate()

    def __len__(self) -> int:
        return len(self.items)

    # ---- bad-item accounting -------------------------------------------------------
    def _record(self, reason: str, path: str, detail: str) -> None:
        self.skipped[reason] += 1
        self.skipped_paths.append(path)
        log.warning("skipping %s (%s): %s", path, reason, detail)

    def _check_budget(self) -> None:
        bad = sum(self.skipped.values())
        if bad > self.max_bad_fraction * max(self.total, 1) or bad >= self.total:
            raise DataError(
                f"{bad} of {self.total} items in {self.source} are bad "
                f"(limit {self.max_bad_fraction:.1%}): {dict(self.skipped)}; first bad files: "
                f"{self.skipped_paths[:5]}. Fix the data or raise max_bad_fraction."
            )

    def validate(self) -> AudioDataset:
        """Drop bad items found from the headers alone, then apply the bad-fraction limit.

        Fills `Item.duration` from the header when the annotation did not state it.

        Raises:
            DataError: more than `max_bad_fraction` of the items are bad.
        """
        from tqdm.auto import tqdm

        good = []
        bar = tqdm(self.items, desc=f"checking {os.path.basename(self.source)}", unit="file",
                   disable=not self.progress, leave=False)  # fmt: skip
        for item in bar:
            if self.require_text and not item.text.strip():
                self._record("empty_text", item.path, f"item {item.id} has no target text")
                continue
            try:
                infos = [audio_info(p) for p in (item.path, *item.expand)]
            except AudioError as e:
                self._record(_reason(e), item.path, str(e))
                continue
            if item.duration is None:
                item.duration = infos[0].duration
            good.append(item)
        self.items = good
        self._bad.clear()
        self._check_budget()
        return self

    # ---- loading ---------------------------------------------------------------------
    def load(self, index: int) -> Example:
        """Load one item, raising `AudioError`/`DataError` instead of skipping."""
        item = self.items[index]
        if self.require_text and not item.text.strip():
            raise DataError(f"item {item.id} ({item.path}) has no target text")
        wave = load_audio(item.path, expand=item.expand, **self.load_kwargs)
        return Example(item.id, wave, item.task, item.prompt, item.text, item.references)

    def __getitem__(self, index: int) -> Example:
        n = len(self.items)
        if n == 0:
            raise DataError(f"no usable items in {self.source}")
        for k in range(n):  # a bad item is replaced by the next good one
            i = (index + k) % n
            if i in self._bad:
                continue
            try:
                return self.load(i)
            except (AudioError, DataError) as e:
                self._bad.add(i)
                reason = _reason(e) if isinstance(e, AudioError) else "empty_text"
                self._record(reason, self.items[i].path, str(e))
                self._check_budget()
        raise DataError(f"no usable items in {self.source}: {dict(self.skipped)}")


def collate(examples: Sequence[Example], *, pad_to: int | None = None) -> AudioBatch:
    """Stack examples into one `AudioBatch`, zero-padding waveforms on the right.

    Args:
        examples: b loaded examples (e.g. from `AudioDataset`).
        pad_to: pad to at least this many samples (a fixed shape for compiled models).

    Returns:
        AudioBatch with waveforms [b, s], lengths [b], and per-item task/prompt/answer/id.
    """
    if not examples:
        raise DataError("collate got an empty list of examples")
    lengths = torch.tensor([ex.waveform.shape[0] for ex in examples], dtype=torch.long)
    s = max(int(lengths.max()), pad_to or 0)
    waves = torch.zeros(len(examples), s, dtype=torch.float32)
    for row, ex in zip(waves, examples):
        row[: ex.waveform.shape[0]] = ex.waveform
    return AudioBatch(
        waveforms=waves,
        lengths=lengths,
        tasks=[ex.task for ex in examples],
        prompts=[ex.prompt for ex in examples],
        answers=[ex.text for ex in examples],
        ids=[ex.id for ex in examples],
        sample_rate=SAMPLE_RATE,
    )
