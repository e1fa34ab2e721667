from __future__ import annotations

import logging

import pytest
import torch
from torch.utils.data import DataLoader

from distill.contracts import AudioBatch
from distill.data.annotations import Item
from distill.data.dataset import AudioDataset, DataError, collate
from distill.data.prompts import TASK_PROMPTS
from distill.data.sampling import SamplingConfig, make_sampler
from distill.data.summary import summarize, to_markdown

from .conftest import write_tone


def make_items(tmp_path, n_good: int, *, bad: dict[str, int] | None = None) -> list[Item]:
    """n_good tone clips (0.5 .. 2 s), then bad items by reason."""
    items = []
    for i in range(n_good):
        path = write_tone(tmp_path / f"good{i}.wav", 0.5 + 1.5 * i / max(n_good - 1, 1), sr=8000)
        items.append(Item(f"g{i}", path, "word " * (i % 5 + 1), "asr", TASK_PROMPTS["asr"]))
    for reason, count in (bad or {}).items():
        for j in range(count):
            path = tmp_path / f"{reason}{j}.wav"
            if reason == "corrupt":
                path.write_bytes(b"not audio at all" * 20)
            elif reason == "empty":
                write_tone(path, 0.0)
            text = "" if reason == "notext" else "x"
            items.append(Item(f"{reason}{j}", str(path), text, "asr", TASK_PROMPTS["asr"]))
    return items


def test_validate_skips_bad_items_and_counts_them(tmp_path, caplog):
    items = make_items(tmp_path, 36, bad={"missing": 1, "corrupt": 1, "empty": 1, "notext": 1})
    ds = AudioDataset(items, max_bad_fraction=0.2, progress=False)
    with caplog.at_level(logging.WARNING, logger="distill.data.dataset"):
        ds.validate()
    assert len(ds) == 36 and ds.total == 40
    assert dict(ds.skipped) == {
        "missing_file": 1,
        "unreadable_audio": 1,
        "zero_length": 1,
        "empty_text": 1,
    }
    assert {p.rsplit("/", 1)[-1] for p in ds.skipped_paths} == {
        "missing0.wav",
        "corrupt0.wav",
        "empty0.wav",
        "notext0.wav",
    }
    assert "corrupt0.wav" in caplog.text and "missing0.wav" in caplog.text
    assert ds.items[3].duration == pytest.approx(
        0.5 + 1.5 * 3 / 35, abs=1 / 8000
    )  # filled from the header


def test_bad_fraction_over_threshold_fails_the_run(tmp_path):
    items = make_items(tmp_path, 18, bad={"corrupt": 2})
    with pytest.raises(DataError, match=r"2 of 20 items .* bad \(limit 5.0%\).*corrupt0.wav"):
        AudioDataset(items, progress=False, validate=True)
    AudioDataset(items, max_bad_fraction=0.1, progress=False, validate=True)  # at the limit: fine


def test_load_time_failure_is_replaced_by_next_good_item(tmp_path):
    items = make_items(tmp_path, 9, bad={"corrupt": 1})
    items.insert(2, items.pop())  # a bad item at index 2, never validated
    ds = AudioDataset(items, max_bad_fraction=0.2)
    ex = ds[2]
    assert ex.id == "g2" and ds.skipped["unreadable_audio"] == 1
    assert ds[2].id == "g2" and ds.skipped["unreadable_audio"] == 1  # remembered, counted once
    strict = AudioDataset(items, max_bad_fraction=0.05)
    with pytest.raises(DataError, match="1 of 10 items"):
        strict[2]


def test_collate_builds_a_valid_audio_batch(tmp_path):
    ds = AudioDataset(make_items(tmp_path, 4))
    batch = collate([ds[i] for i in range(4)])
    assert isinstance(batch, AudioBatch) and batch.sample_rate == 16000
    assert batch.lengths.tolist() == [16000, 16000, 24000, 32000]  # 0.5 s padded to 1 s
    assert batch.waveforms.shape == (4, 32000)
    assert batch.waveforms[0, 16000:].abs().max() == 0  # right padding is zeros
    assert batch.ids == ["g0", "g1", "g2", "g3"] and batch.tasks == ["asr"] * 4
    assert batch.prompts == [TASK_PROMPTS["asr"]] * 4 and batch.answers[1] == "word word "
    assert collate([ds[0]], pad_to=48000).waveforms.shape == (1, 48000)
    with pytest.raises(DataError, match="empty"):
        collate([])


def test_dataloader_with_two_workers(tmp_path):
    ds = AudioDataset(make_items(tmp_path, 12), progress=False).validate()
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert [len(b) for b in batches] == [4, 4, 4]
    assert [i for b in batches for i in b.ids] == [f"g{i}" for i in range(12)]
    single = collate([ds[i] for i in range(4, 8)])
    torch.testing.assert_close(batches[1].waveforms, single.waveforms)
    sampler = make_sampler(ds.items, SamplingConfig(batch_size=3, n_strata=3, seed=1))
    stratified = list(DataLoader(ds, batch_sampler=sampler, num_workers=2, collate_fn=collate))
    assert [b.ids for b in stratified] == [[ds.items[i].id for i in b] for b in sampler.batches(0)]


def test_summary_counts_and_renders(tmp_path):
    items = make_items(tmp_path, 10, bad={"missing": 1})
    items[0].task = "audiocaption_v2"
    ds = AudioDataset(items, max_bad_fraction=0.2, progress=False).validate()
    s = summarize(ds)
    assert s["num_items"] == 10 and s["num_total"] == 11
    assert s["by_task"] == {"asr": 9, "audiocaption_v2": 1}
    # 0.5 + 1.5 i / 9 s: 0.5, 0.67, 0.83 below 1 s
    assert s["duration_histogram"]["0-1s"] == 3 and sum(s["duration_histogram"].values()) == 10
    assert s["skipped"] == {"missing_file": 1} and len(s["text_words_deciles"]) == 11
    assert s["hours"] == pytest.approx(sum(it.duration for it in ds.items) / 3600, abs=1e-4)
    md = to_markdown(s)
    assert "| asr | 9 |" in md and "| missing_file | 1 |" in md and "missing0.wav" in md
