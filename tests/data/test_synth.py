from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from distill.data.annotations import read_annotations
from distill.data.dataset import AudioDataset, collate
from distill.data.prompts import TASK_PROMPTS
from distill.data.synth import add_arguments, make_corpus, run, texts
from distill.data.synth_sounds import Event, SoundSpec
from distill.data.synth_speech import resample_np


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_whatever_the_worker_count(corpus, tmp_path):
    out, _ = corpus
    again = tmp_path / "again"
    make_corpus(again, seed=3, n_speech=40, n_sounds=20, workers=1)
    assert digest(again) == digest(out)
    other = tmp_path / "other"
    make_corpus(other, seed=4, n_speech=40, n_sounds=20, workers=2)
    assert (
        digest(other)["audio/speech/speech-00000.flac"]
        != digest(out)["audio/speech/speech-00000.flac"]
    )


def test_layout_splits_and_formats(corpus):
    out, files = corpus
    assert set(files) == {"train", "valid", "test", "testset"}
    splits = {s: read_annotations(files[s], require_text=True) for s in ("train", "valid", "test")}
    assert [len(v) for v in splits.values()] == [48, 6, 6]
    ids = [it.id for v in splits.values() for it in v]
    assert len(set(ids)) == 60
    for v in splits.values():  # both tasks in every split
        assert {it.task for it in v} == {"asr", "audiocaption_v2"}
    raw = json.loads(Path(files["train"]).read_text())["annotation"][0]
    assert not os.path.isabs(raw["path"]) and raw["path"].endswith(".flac")
    testset = json.loads(Path(files["testset"]).read_text())
    assert [set(r) for r in testset] == [{"testset_id", "path", "task"}] * 6
    assert [r["testset_id"] for r in testset] == [it.id for it in splits["test"]]
    for it in (it for v in splits.values() for it in v if it.task == "audiocaption_v2"):
        assert it.text == it.references[0] and len(set(it.references)) >= 3
    info = sf.info(splits["train"][0].path)
    assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC")


def test_every_item_loads_and_speech_is_real(corpus):
    _, files = corpus
    items = [it for s in ("train", "valid", "test") for it in read_annotations(files[s])]
    ds = AudioDataset(items, max_bad_fraction=0.0, progress=False).validate()
    assert len(ds) == 60 and not ds.skipped
    batch = collate([ds[i] for i in range(len(ds))])
    assert len(batch) == 60 and batch.waveforms.abs().max() <= 1.0
    words, seconds = [], []
    for i, it in enumerate(ds.items):
        wave = batch.waveforms[i, : batch.lengths[i]]
        assert float(wave.pow(2).mean().sqrt()) > 0.01, f"{it.path} is silent"
        assert it.duration == pytest.approx(sf.info(it.path).duration, abs=1e-3)
        if it.task == "asr":
            words.append(len(it.text.split()))
            seconds.append(it.duration)
    words, seconds = np.array(words), np.array(seconds)
    means = [seconds[words == k].mean() for k in sorted(set(words))]
    assert means == sorted(means) and means[-1] > 1.5 * means[0]
    assert np.corrcoef(words, seconds)[0, 1] > 0.6


def test_cache_reuses_a_complete_corpus_and_rebuilds_a_broken_one(corpus, tmp_path):
    out = tmp_path / "c"
    files = make_corpus(out, seed=0, n_speech=8, n_sounds=4)
    victim = Path(read_annotations(files["train"])[0].path)
    stamp = victim.stat().st_mtime_ns
    assert make_corpus(out, seed=0, n_speech=8, n_sounds=4) == files
    assert victim.stat().st_mtime_ns == stamp  # reused, not rewritten
    victim.unlink()
    make_corpus(out, seed=0, n_speech=8, n_sounds=4)  # incomplete: rebuilt
    assert victim.exists()
    make_corpus(out, seed=0, n_speech=8, n_sounds=6)  # other params: rebuilt in place
    assert sum(1 for _ in (out / "audio" / "sounds").iterdir()) == 6


def test_texts_holds_targets_references_and_prompts(corpus):
    out, files = corpus
    all_texts = texts(out)
    for s in ("train", "valid", "test"):
        for it in read_annotations(files[s]):
            assert set(it.references) <= set(all_texts)
    assert set(TASK_PROMPTS.values()) <= set(all_texts) and len(all_texts) == len(set(all_texts))


def test_cli_writes_a_corpus(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path / "cli"), "--seed", "1", "--n-speech", "6",
                              "--n-sounds", "3", "--vocab-size", "10", "--max-words", "3"])  # fmt: skip
    assert run(args) == 0
    assert "train" in capsys.readouterr().out
    items = read_annotations(tmp_path / "cli" / "train.json")
    words = {w for it in items if it.task == "asr" for w in it.text.split()}
    assert (
        words
        and len(words) <= 10
        and max(len(it.text.split()) for it in items if it.task == "asr") <= 3
    )


def test_resampler_keeps_a_tone_and_rejects_aliases():
    t = np.arange(22050) / 22050
    y = resample_np(np.sin(2 * np.pi * 1000 * t), 22050, 16000)
    assert len(y) == 16000
    spec = np.abs(np.fft.rfft(y))
    assert spec.argmax() == 1000 and spec[1000] > 0.45 * 16000
    alias = resample_np(np.sin(2 * np.pi * 10000 * t), 22050, 16000)  # above the new Nyquist
    assert np.abs(alias[500:-500]).max() < 0.01  # away from the edge transients


def test_sound_captions_follow_the_events():
    spec = SoundSpec((Event("beeps", pitch="high", count=3), Event("up")), "sequence", seed=0)
    refs = spec.references(5)
    assert refs[0] == "Three high beeps followed by a rising tone."
    assert len(refs) == len(set(refs)) == 3  # three templates each, cycled in step
    assert (
        SoundSpec((Event("tone", pitch="low"),), "over", 0).caption()
        == "a low tone over background noise"
    )


def test_event_seconds_bounds_sound_clips_and_is_validated(tmp_path):
    """Events of 0.3-0.4 s: a clip is at most pad + event + gap + event + pad = 1.8 s."""
    from distill.data.synth_sounds import plan_sound, render_sound

    rng = np.random.default_rng(0)
    specs = [plan_sound(rng, i, (0.3, 0.4)) for i in range(60)]
    assert all(0.3 <= ev.seconds <= 0.4 for spec in specs for ev in spec.events)
    assert any(len(spec.events) == 2 for spec in specs)
    longest = max(len(render_sound(spec)) for spec in specs) / 16_000
    assert 0.5 < longest <= 1.8
    with pytest.raises(ValueError, match="event_seconds"):
        make_corpus(tmp_path / "bad", n_speech=0, n_sounds=2, event_seconds=(0.5, 0.2))
