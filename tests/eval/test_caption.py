"""Captioning metrics: CIDEr-D through aac-metrics with Python tokenization, SPICE gating."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from aac_metrics.functional import evaluate
from aac_metrics.functional.cider_d import cider_d

from distill.eval import caption
from distill.eval.caption import caption_metrics, ptb_tokenize, spice_available

HYPS = [
    "A dog barks loudly, twice.",
    "Rain falls on a tin roof.",
    "A man speaks while cars pass by",
    "birds are singing",
]
REFS = [
    ["A dog is barking.", "Dog barking loudly", "a dog barks twice in the yard"],
    ["Heavy rain on a roof.", "rain falling on a metal roof"],  # references per clip may differ
    ["A man talks as traffic passes.", "someone speaks near a road", "a man is speaking"],
    ["Birds chirp in the morning.", "several birds sing"],
]


def naive_cider_d(cands: list[list[str]], mrefs: list[list[list[str]]], n=4, sigma=6.0) -> float:
    """CIDEr-D from its definition (Vedantam et al. 2015, eq. 4-5 with the D changes):
    tf-idf n-gram vectors with idf = log(#clips / df) over reference sets, clipped cosine
    min(g_c, g_r) * g_r / (|g_c| |g_r|), Gaussian length penalty, x10, mean over refs and n."""

    def grams(words, k):
        return Counter(tuple(words[i : i + k]) for i in range(len(words) - k + 1))

    num = len(cands)
    scores = []
    for k in range(1, n + 1):
        df = Counter(g for refs in mrefs for g in set().union(*(grams(r, k) for r in refs)))

        def vec(words, k=k, df=df):
            return {
                g: c * (math.log(num) - math.log(max(1.0, df[g])))
                for g, c in grams(words, k).items()
            }

        per_clip = []
        for cand, refs in zip(cands, mrefs):
            vc = vec(cand)
            nc = math.sqrt(sum(v * v for v in vc.values()))
            total = 0.0
            for ref in refs:
                vr = vec(ref)
                nr = math.sqrt(sum(v * v for v in vr.values()))
                dot = sum(min(vc[g], vr.get(g, 0.0)) * vr.get(g, 0.0) for g in vc)
                sim = dot / (nc * nr) if nc and nr else 0.0
                total += sim * math.exp(-((len(cand) - len(ref)) ** 2) / (2 * sigma**2))
            per_clip.append(10.0 * total / len(refs))
        scores.append(per_clip)
    return sum(sum(s[i] for s in scores) / n for i in range(num)) / num


def test_ptb_tokenize_cases():
    assert ptb_tokenize("A dog's barking, then (loud) rain...") == [
        "a", "dog", "'s", "barking", "then", "loud", "rain",
    ]  # fmt: skip
    assert ptb_tokenize("It isn't 3.5 o'clock -- it's a well-known bark!") == [
        "it", "is", "n't", "3.5", "o'clock", "it", "'s", "a", "well-known", "bark",
    ]  # fmt: skip
    assert ptb_tokenize('He said "hello"; she cannot.') == [
        "he",
        "said",
        "hello",
        "she",
        "can",
        "not",
    ]


def test_cider_d_equals_aac_metrics_and_the_definition():
    out = caption_metrics(HYPS, REFS, ids=["c0", "c1", "c2", "c3"])
    cands = [" ".join(ptb_tokenize(h)) for h in HYPS]
    mrefs = [[" ".join(ptb_tokenize(r)) for r in refs] for refs in REFS]
    corpus, _ = evaluate(cands, mrefs, preprocess=False, metrics=["cider_d"])
    assert out["cider_d"] == pytest.approx(float(corpus["cider_d"]), abs=1e-12)
    expected = naive_cider_d(
        [c.split() for c in cands], [[r.split() for r in refs] for refs in mrefs]
    )
    assert out["cider_d"] == pytest.approx(expected, rel=1e-9)
    assert out["metrics"] == ["cider_d"] and "spider" not in out
    assert out["references_per_clip"] == [2, 3]
    assert [w["id"] for w in out["worst"]][-1] in {"c0", "c1", "c2", "c3"}
    worst_scores = [w["cider_d"] for w in out["worst"]]
    assert worst_scores == sorted(worst_scores)


def test_per_clip_cider_d_averages_to_the_corpus_value():
    out = caption_metrics(HYPS, REFS, ids=["c0", "c1", "c2", "c3"], worst=1)
    per = out["per_item"]
    assert list(per) == ["c0", "c1", "c2", "c3"] and set(per["c0"]) == {"cider_d"}
    assert sum(p["cider_d"] for p in per.values()) / 4 == pytest.approx(out["cider_d"], rel=1e-12)
    cands = [" ".join(ptb_tokenize(h)) for h in HYPS]
    mrefs = [[" ".join(ptb_tokenize(r)) for r in refs] for refs in REFS]
    sents = cider_d(cands, mrefs, return_all_scores=True)[1]["cider_d"]
    assert [p["cider_d"] for p in per.values()] == pytest.approx([float(x) for x in sents])
    assert per[out["worst"][0]["id"]]["cider_d"] == min(p["cider_d"] for p in per.values())


def test_field_number_is_cider_d_x100_untokenized_first_reference():
    out = caption_metrics(HYPS, REFS)
    raw = cider_d([h.lower() for h in HYPS], [[r[0]] for r in REFS])[0]["cider_d"]
    assert out["field_cider_d_x100"] == pytest.approx(100 * float(raw))
    assert "spider" not in out  # the field's "SPIDEr" label is never reused


def test_single_candidate_gives_a_clear_note_not_a_crash():
    out = caption_metrics(["a dog barks"], [["a dog is barking"]])
    assert out["cider_d"] is None and out["per_item"] == {}
    assert "at least 2 candidates" in out["notes"][0]


def test_spice_absent_here_is_reported():
    ok, why = spice_available()
    if ok:
        pytest.skip("aac-metrics Java tools are installed on this machine")
    out = caption_metrics(HYPS, REFS)
    assert any("SPICE/SPIDEr skipped" in n for n in out["notes"])
    with pytest.raises(RuntimeError, match="SPICE/SPIDEr skipped"):
        caption_metrics(HYPS, REFS, use_spice=True)


def test_spider_is_mean_of_cider_d_and_spice_when_spice_runs(monkeypatch):
    monkeypatch.setattr(caption, "spice_available", lambda: (True, "SPICE available"))
    monkeypatch.setattr(caption, "_spice_scores", lambda c, r: (0.25, [0.1, 0.2, 0.3, 0.4]))
    out = caption_metrics(HYPS, REFS)
    assert out["metrics"] == ["cider_d", "spice", "spider"]
    assert out["spice"] == 0.25
    assert out["spider"] == pytest.approx((out["cider_d"] + 0.25) / 2)
    per = out["per_item"]["1"]
    assert per["spice"] == 0.2 and per["spider"] == pytest.approx((per["cider_d"] + 0.2) / 2)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="2 hypotheses but 1 reference lists"):
        caption_metrics(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="no reference caption for items \\[1\\]"):
        caption_metrics(["a", "b"], [["a"], []])
