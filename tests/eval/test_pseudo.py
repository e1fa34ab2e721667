"""Pseudo-labels: the teacher's answer scores and the keep/drop filter (`distill.pseudo`)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace

import pytest
import torch

from distill.data.annotations import Item
from distill.eval.io import read_test_items
from distill.eval.runner import load_batch
from distill.pseudo import answer_logprobs, filter_pseudo_labels


def _item(i: str, task: str = "asr") -> Item:
    return Item(id=i, path=f"{i}.wav", text="", task=task, prompt="p")


def test_answer_logprobs_match_per_item_reference(tiny_model, test_set):
    items = read_test_items(test_set)
    answers = {it.id: a for it, a in zip(items, ["hello world", "grey", "a dog barks", ""])}
    got = answer_logprobs(tiny_model, items, answers, batch_size=3)
    assert got[items[3].id] == -math.inf  # empty answer
    for it in items[:3]:
        # reference: one item at a time, log-softmax over the full vocabulary by hand
        batch = replace(load_batch([it]), answers=[answers[it.id]])
        with torch.no_grad():
            out = tiny_model(batch)
        logits = out.logits[0].double()
        n = int(out.mask[0].sum())
        ids = out.token_ids[0, :n]
        lse = torch.logsumexp(logits[:n], dim=-1)
        want = float((logits[torch.arange(n), ids] - lse).mean())
        assert n >= 2  # at least one answer token and the end token
        assert got[it.id] == pytest.approx(want, abs=1e-4)
        assert got[it.id] < 0


def test_answer_logprobs_names_a_missing_answer(tiny_model, test_set):
    items = read_test_items(test_set)
    with pytest.raises(KeyError, match=items[1].id):
        answer_logprobs(tiny_model, items, {items[0].id: "x"})


def test_filter_keeps_and_drops_known_cases():
    items = [_item("a"), _item("b"), _item("c"), _item("d"), _item("e"),
             _item("f", "audiocaption_v2")]  # fmt: skip
    answers = {
        "a": "red fish blue bird",  # labelled, 1 error in 4 words = 25 % > 10 %: dropped
        "b": "Red fish, blue bird.",  # labelled, normalised to 0 errors: kept
        "c": "green dog",  # unlabelled, confident: kept
        "d": "green dog dog",  # unlabelled, unsure: dropped
        "e": "   ",  # empty: dropped
        "f": "A high tone.",  # caption, confident: kept
    }
    logprobs = {"a": -9.0, "b": -9.0, "c": -0.1, "d": -0.9, "e": -math.inf, "f": -0.3}
    labels = {"a": "red fish blue dog", "b": "red fish blue bird"}
    kept, stats = filter_pseudo_labels(items, answers, logprobs, labels=labels, max_wer=0.10,
                                       min_logprob=-0.5)  # fmt: skip
    assert [k.id for k in kept] == ["b", "c", "f"]
    assert [k.text for k in kept] == ["Red fish, blue bird.", "green dog", "A high tone."]
    assert all(k.references == (k.text,) and k.extra["label"] == "teacher" for k in kept)
    assert stats.to_dict() == {
        "items": 6, "kept": 3, "dropped_empty": 1, "dropped_wer": 1, "dropped_logprob": 1,
        "by_task": {"asr": {"items": 5, "kept": 2}, "audiocaption_v2": {"items": 1, "kept": 1}},
    }  # fmt: skip
    # a looser WER threshold keeps "a" (25 % <= 30 %); no log-prob rule keeps "d"
    kept, _ = filter_pseudo_labels(items, answers, logprobs, labels=labels, max_wer=0.30)
    assert [k.id for k in kept] == ["a", "b", "c", "d", "f"]


def test_filter_needs_logprobs_for_a_logprob_threshold():
    with pytest.raises(ValueError, match="answer_logprobs"):
        filter_pseudo_labels([_item("a")], {"a": "x"}, None, min_logprob=-1.0)


# ---- the pseudo-label cache -------------------------------------------------------------
def _fake_teacher(monkeypatch, answers: dict, logprobs: dict, calls: list):
    """generate_all / answer_logprobs replaced by known answers (no model needed)."""
    import distill.eval.runner as runner
    import distill.pseudo as pseudo

    def generate_all(model, items, **kw):
        calls.append([it.id for it in items])
        return {it.id: answers[it.id] for it in items}, {}

    monkeypatch.setattr(runner, "generate_all", generate_all)
    monkeypatch.setattr(
        pseudo,
        "answer_logprobs",
        lambda model, items, texts, **kw: {it.id: logprobs[it.id] for it in items},
    )


def test_pseudo_cache_filter_keeps_and_drops_known_cases(monkeypatch, tmp_path):
    """Labelled ASR items: WER rule (10 %); unlabelled items: log-prob rule; empty: dropped."""
    from distill.data.annotations import read_annotations
    from distill.pseudo import build_pseudo_cache, write_pseudo_labels

    items = [
        replace(_item("a"), text="the dog barks at the old cat near the house"),  # 1 in 10
        replace(_item("b"), text="the dog barks"),  # answer is another sentence
        _item("c"),  # no label, confident
        _item("d"),  # no label, unsure
        _item("e", task="audiocaption_v2"),  # empty answer
    ]
    answers = {"a": "the dog barks at the old cat near a house", "b": "a cat sat on the mat",
               "c": "rain falls", "d": "wind", "e": ""}  # fmt: skip
    logprobs = {"a": -0.2, "b": -0.1, "c": -0.5, "d": -3.0, "e": -math.inf}
    _fake_teacher(monkeypatch, answers, logprobs, [])
    cache = build_pseudo_cache(None, items, tmp_path / "pl", shard_size=2, progress=False)
    manifest, stats = write_pseudo_labels(items, cache, tmp_path / "pl" / "pseudo_labels.json",
                                          min_logprob=-1.0)  # fmt: skip
    kept = read_annotations(manifest)
    assert [(k.id, k.text) for k in kept] == [("a", answers["a"]), ("c", "rain falls")]
    assert all(k.extra["label"] == "teacher" for k in kept)
    assert (stats.kept, stats.dropped_wer, stats.dropped_logprob, stats.dropped_empty) == (
        2,
        1,
        1,
        1,
    )
    written = json.loads((tmp_path / "pl" / "pseudo_labels.stats.json").read_text())
    assert written["kept"] == 2 and written["max_wer"] == 0.10 and written["min_logprob"] == -1.0


def test_pseudo_cache_resumes_and_checks_its_shards(monkeypatch, tmp_path):
    from distill.cache import CacheError
    from distill.pseudo import build_pseudo_cache, read_pseudo_cache

    items = [_item(f"x{i}") for i in range(5)]
    answers = {it.id: f"word {i}" for i, it in enumerate(items)}
    logprobs = {it.id: -0.1 * i for i, it in enumerate(items)}
    calls: list = []
    _fake_teacher(monkeypatch, answers, logprobs, calls)
    import distill.pseudo as pseudo

    real = pseudo.answer_logprobs

    def dies_on_second_shard(model, chunk, texts, **kw):
        if chunk[0].id == "x2":
            raise KeyboardInterrupt
        return real(model, chunk, texts, **kw)

    monkeypatch.setattr(pseudo, "answer_logprobs", dies_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        build_pseudo_cache(None, items, tmp_path / "pl", shard_size=2, progress=False)
    with pytest.raises(CacheError, match="incomplete"):
        read_pseudo_cache(tmp_path / "pl")
    monkeypatch.setattr(pseudo, "answer_logprobs", real)
    calls.clear()
    build_pseudo_cache(None, items, tmp_path / "pl", shard_size=2, progress=False)
    assert calls == [["x2", "x3"], ["x4"]]  # the first shard was kept
    got_answers, got_logprobs = read_pseudo_cache(tmp_path / "pl")
    assert got_answers == answers and got_logprobs == pytest.approx(logprobs)
    shard = tmp_path / "pl" / "pseudo_00001.jsonl"
    shard.write_text(shard.read_text().replace("word 2", "word 9"))
    with pytest.raises(CacheError, match="pseudo_00001.jsonl is corrupt"):
        read_pseudo_cache(tmp_path / "pl")
    calls.clear()
    build_pseudo_cache(None, items, tmp_path / "pl", shard_size=2, progress=False)
    assert calls == [["x2", "x3"]]  # only the corrupt shard is redone
    assert read_pseudo_cache(tmp_path / "pl")[0] == answers
    with pytest.raises(CacheError, match="different request"):
        build_pseudo_cache(None, items[:4], tmp_path / "pl", shard_size=2, progress=False)


def test_distill_cache_pseudo_labels_end_to_end(tiny_model, test_set, tmp_path):
    """The CLI on an audio-only manifest with a real (tiny) teacher: shards, manifest, stats."""
    from distill.cli import main
    from distill.data.annotations import read_annotations
    from distill.pseudo import read_pseudo_cache

    rows = json.loads(open(test_set).read())
    audio_only = tmp_path / "audio.json"
    base = os.path.dirname(test_set)
    audio_only.write_text(json.dumps({"annotation": [
        {"path": os.path.join(base, r["path"]), "task": r["task"], "Q": "Describe the audio."}
        for r in rows
    ]}))  # fmt: skip
    tiny_model.save_pretrained(tmp_path / "teacher")
    out = tmp_path / "pl"
    assert main(["cache", "--teacher", str(tmp_path / "teacher"), "--data", str(audio_only),
                 "--out", str(out), "--pseudo-labels", "--batch-size", "2",
                 "--shard-size", "2", "--max-new-tokens", "4"]) == 0  # fmt: skip
    answers, logprobs = read_pseudo_cache(out)
    assert len(answers) == 4 and all(v <= 0 for v in logprobs.values())
    stats = json.loads((out / "pseudo_labels.stats.json").read_text())
    kept = read_annotations(out / "pseudo_labels.json")
    assert stats["items"] == 4 and stats["kept"] == len(kept)
    assert {k.text for k in kept} <= set(answers.values())
