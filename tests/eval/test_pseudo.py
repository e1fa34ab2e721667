"""Pseudo-labels: the teacher's answer scores and the keep/drop filter (`distill.pseudo`)."""

from __future__ import annotations

import math
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
