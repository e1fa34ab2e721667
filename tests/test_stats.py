"""distill.stats: paired bootstrap CIs with known answers, verdicts, gap closed, item loading."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from distill import stats
from distill.stats import (
    corpus_wer,
    gap_closed,
    load_item_scores,
    mean,
    mean_std,
    paired_bootstrap,
    pooled_paired_bootstrap,
    verdict,
    wer_percent,
)


def wer_pairs(rng, n, max_errors):
    words = rng.integers(3, 20, size=n)
    return np.stack([rng.integers(0, max_errors, size=n), words], axis=1)


def test_constant_shift_gives_a_zero_width_ci_at_the_shift():
    a = np.random.default_rng(0).normal(size=300)
    out = paired_bootstrap(a, a + 0.25, mean, n_resamples=500)
    assert out["diff"] == pytest.approx(0.25, abs=1e-12)
    assert out["lo"] == pytest.approx(0.25, abs=1e-12)
    assert out["hi"] == pytest.approx(0.25, abs=1e-12)
    assert (out["n_items"], out["n_resamples"], out["confidence"]) == (300, 500, 0.95)


def test_mean_difference_ci_matches_normal_theory_on_a_large_iid_sample():
    rng = np.random.default_rng(1)
    n = 2000
    a = rng.normal(size=n)
    b = a + 0.1 + rng.normal(scale=0.5, size=n)
    d = b - a
    half = 1.96 * d.std(ddof=1) / math.sqrt(n)
    out = paired_bootstrap(a, b, mean, n_resamples=2000, seed=3)
    assert out["diff"] == pytest.approx(d.mean(), abs=1e-12)
    # Monte Carlo error of a 2.5 % percentile at 2000 resamples is ~0.06 se; allow 0.3 se
    assert out["lo"] == pytest.approx(d.mean() - half, abs=0.15 * half)
    assert out["hi"] == pytest.approx(d.mean() + half, abs=0.15 * half)


def test_wer_bootstrap_equals_a_naive_loop_over_the_same_draws():
    rng = np.random.default_rng(2)
    a, b = wer_pairs(rng, 50, 6), wer_pairs(rng, 50, 4)
    b[:, 1] = a[:, 1]  # same references, so the same reference word counts
    out = paired_bootstrap(a, b, wer_percent, n_resamples=300, seed=7)
    idx = np.random.default_rng(7).integers(0, 50, size=(300, 50))
    naive = []
    for row in idx:
        ea = sum(int(a[i, 0]) for i in row)
        eb = sum(int(b[i, 0]) for i in row)
        words = sum(int(a[i, 1]) for i in row)
        naive.append(100 * eb / words - 100 * ea / words)
    lo, hi = np.percentile(naive, [2.5, 97.5])
    assert out["lo"] == pytest.approx(lo, rel=1e-12) and out["hi"] == pytest.approx(hi, rel=1e-12)
    total = a[:, 1].sum()
    assert out["diff"] == pytest.approx(100 * (b[:, 0].sum() - a[:, 0].sum()) / total)


def test_deterministic_given_seed_and_fast():
    rng = np.random.default_rng(4)
    a, b = wer_pairs(rng, 400, 5), wer_pairs(rng, 400, 5)
    t0 = time.perf_counter()
    first = paired_bootstrap(a, b, wer_percent, seed=11)
    assert time.perf_counter() - t0 < 1.0  # 2000 resamples x 400 items
    assert paired_bootstrap(a, b, wer_percent, seed=11) == first
    other = paired_bootstrap(a, b, wer_percent, seed=12)
    assert other["diff"] == first["diff"]  # the point estimate does not depend on the seed


def test_corpus_wer_is_sum_over_sum_in_both_forms():
    errors, words = np.array([1, 0, 4]), np.array([7, 3, 10])
    assert corpus_wer(errors, words) == pytest.approx(5 / 20)
    assert corpus_wer(np.stack([errors, words], axis=1)) == pytest.approx(5 / 20)
    assert wer_percent(np.stack([errors, words], axis=1)) == pytest.approx(25.0)
    batch = np.stack([np.stack([errors, words], 1), np.stack([errors * 2, words], 1)])
    np.testing.assert_allclose(corpus_wer(batch), [0.25, 0.5])  # leading resample axis
    assert mean(np.array([0.2, 0.4, 0.9])) == pytest.approx(0.5)


def test_pooled_bootstrap_with_one_seed_is_the_single_one():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=120), rng.normal(loc=0.2, size=120)
    single = paired_bootstrap(a, b, mean, seed=9)
    assert pooled_paired_bootstrap([(a, b)], mean, seed=9) == single
    twice = pooled_paired_bootstrap([(a, b), (a, b)], mean, seed=9)
    assert twice["diff"] == pytest.approx(single["diff"])
    assert twice["lo"] == pytest.approx(single["lo"]) and twice["hi"] == pytest.approx(single["hi"])


def test_pooled_bootstrap_averages_the_seeds_with_joint_items():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    out = pooled_paired_bootstrap([(a, a + 1.0), (a, a + 3.0)], mean, n_resamples=200)
    assert out["diff"] == pytest.approx(2.0)
    assert out["lo"] == pytest.approx(2.0) and out["hi"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="same 4 test items"):
        pooled_paired_bootstrap([(a, a), (a[:3], a[:3])], mean)


@pytest.mark.parametrize(
    "lo, hi, better, expected",
    [
        (-0.5, 0.7, "lower", "ties"),
        (-0.5, 0.7, "higher", "ties"),
        (0.0, 0.7, "higher", "ties"),  # a bound on 0 is a tie
        (-3.0, -1.0, "lower", "beats"),
        (-3.0, -1.0, "higher", "loses"),
        (1.0, 3.0, "lower", "loses"),
        (1.0, 3.0, "higher", "beats"),
    ],
)
def test_verdict(lo, hi, better, expected):
    assert verdict(lo, hi, better) == expected


def test_verdict_rejects_bad_input():
    with pytest.raises(ValueError, match="'lower' or 'higher'"):
        verdict(-1, 1, "smaller")
    with pytest.raises(ValueError, match="out of order"):
        verdict(1, -1, "lower")


def test_gap_closed_closed_form():
    # WER (lower is better): CE 20, teacher 10
    assert gap_closed(20.0, 20.0, 10.0) == 0.0
    assert gap_closed(20.0, 15.0, 10.0) == 0.5
    assert gap_closed(20.0, 10.0, 10.0) == 1.0
    assert gap_closed(20.0, 25.0, 10.0) == -0.5
    # CIDEr-D (higher is better): CE 0.3, teacher 0.5
    assert gap_closed(0.3, 0.4, 0.5) == pytest.approx(0.5)
    assert gap_closed(0.3, 0.5, 0.5) == pytest.approx(1.0)
    assert gap_closed(0.3, 0.3, 0.5) == 0.0
    assert gap_closed(0.3, 0.4, 0.3) is None and gap_closed(0.3, None, 0.5) is None


def test_mean_std():
    assert mean_std([2.0, 4.0, 6.0]) == (4.0, 2.0)  # sample std, ddof=1
    assert mean_std([3.5]) == (3.5, 0.0)
    with pytest.raises(ValueError):
        mean_std([])


def _write_predictions(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_load_item_scores_from_a_run_dir(tmp_path):
    _write_predictions(tmp_path / "run" / "eval" / "predictions.jsonl", [
        {"testset_id": "t0", "task": "asr", "text": "a", "references": ["a b"], "errors": 1,
         "reference_words": 2},
        {"testset_id": "t1", "task": "audiocaption_v2", "text": "x", "references": ["y"],
         "cider_d": 0.4},
        {"testset_id": "t2", "task": "asr", "text": "z", "references": []},  # unscored
    ])  # fmt: skip
    expected = {
        "asr": {"t0": {"errors": 1, "reference_words": 2}},
        "audiocaption_v2": {"t1": {"cider_d": 0.4}},
    }
    assert load_item_scores(tmp_path / "run") == expected
    assert load_item_scores(tmp_path / "run" / "eval") == expected
    a = stats.item_array(expected["asr"], "wer")
    np.testing.assert_array_equal(a, [[1.0, 2.0]])


def test_load_item_scores_names_the_file_when_fields_are_missing(tmp_path):
    path = tmp_path / "old" / "eval" / "predictions.jsonl"
    _write_predictions(
        path, [{"testset_id": "t0", "task": "asr", "text": "a", "references": ["a"]}]
    )
    with pytest.raises(stats.MissingItemScores, match=str(path)):
        load_item_scores(tmp_path / "old")
    with pytest.raises(FileNotFoundError, match="no predictions.jsonl"):
        load_item_scores(tmp_path / "nowhere")


def test_compare_items_refuses_different_test_sets():
    ref = {"a": {"cider_d": 0.1}, "b": {"cider_d": 0.2}}
    out = stats.compare_items(ref, {"a": {"cider_d": 0.3}, "b": {"cider_d": 0.4}}, "cider_d")
    assert out["diff"] == pytest.approx(0.2) and out["verdict"] == "beats"
    with pytest.raises(ValueError, match="different test items"):
        stats.compare_items(ref, {"a": {"cider_d": 0.3}}, "cider_d")
