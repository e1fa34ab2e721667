"""Honest statistics for quality claims: paired bootstrap CIs, verdicts, gap closed.

    a = item_array(load_item_scores("runs/baseline")["asr"], "wer")  # [n, 2] (errors, words)
    b = item_array(load_item_scores("runs/ddat")["asr"], "wer", ids=list(...))
    ci = paired_bootstrap(a, b, wer_percent)  # {"diff", "lo", "hi", ...}, b minus a
    verdict(ci["lo"], ci["hi"], "lower")  # "beats" | "ties" | "loses"

Glossary: n test items, r bootstrap resamples, s seeds, k values per item (2 for WER:
errors and reference words; none for a per-clip score).

The test items are the unit that is resampled (Efron & Tibshirani 1993, ch. 13; Koehn 2004,
"Statistical significance tests for machine translation evaluation", for the paired form):
both systems are scored on the *same* resampled items, so item difficulty cancels out and the
interval is the one of the difference. The interval is the percentile interval of
`statistic(b[idx]) - statistic(a[idx])` over `n_resamples` index draws. A per-clip CIDEr-D
keeps the IDF of the full test set (its document frequencies come from the references only),
as is usual for corpus metrics. Seeds are not resampled: the pooled interval averages the
difference over the given seeds, so it covers test-set noise at those seeds.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from distill.errors import DistillError

Statistic = Callable[[np.ndarray], np.ndarray]
ITEM_FIELDS = ("errors", "reference_words", "cider_d", "spice", "spider")
# elements per resampling block: bounds memory at ~32 MB of float64 whatever n and s are
_BLOCK_ELEMENTS = 4_000_000


# ---- statistics (reduce the item axis; leading axes are resamples) ---------------------------


def corpus_wer(errors: np.ndarray, words: np.ndarray | None = None) -> np.ndarray:
    """Corpus WER = sum of errors / sum of reference words, over the item axis.

    Args:
        errors: [..., n] errors per item, or [..., n, 2] (errors, reference words) pairs
            when `words` is None (the form `paired_bootstrap` passes).
        words: [..., n] reference words per item.

    Returns:
        [...] the WER as a fraction (a float for 1-D input).
    """
    errors = np.asarray(errors, dtype=np.float64)
    if words is None:
        errors, words = errors[..., 0], errors[..., 1]
    return errors.sum(axis=-1) / np.asarray(words, dtype=np.float64).sum(axis=-1)


def wer_percent(pairs: np.ndarray) -> np.ndarray:
    """Corpus WER in percent of [..., n, 2] (errors, reference words) pairs."""
    return 100.0 * corpus_wer(pairs)


def mean(values: np.ndarray) -> np.ndarray:
    """Mean over the item axis of [..., n] per-item scores (corpus CIDEr-D, SPICE, SPIDEr)."""
    return np.asarray(values, dtype=np.float64).mean(axis=-1)


# metric name -> (statistic over item arrays, which direction is better)
METRICS: dict[str, tuple[Statistic, str]] = {
    "wer": (wer_percent, "lower"),
    "cider_d": (mean, "higher"),
    "spice": (mean, "higher"),
    "spider": (mean, "higher"),
}


# ---- the bootstrap ---------------------------------------------------------------------------


def _check_pairs(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[tuple]:
    if not pairs:
        raise ValueError("bootstrap needs at least one (a, b) pair")
    arrays = [(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)) for a, b in pairs]
    n = len(arrays[0][0])
    for s, (a, b) in enumerate(arrays):
        if len(a) != n or len(b) != n or a.shape != b.shape:
            raise ValueError(
                f"bootstrap: seed {s} has arrays of shapes {a.shape} and {b.shape}; every array "
                f"must hold the same {n} test items, aligned"
            )
    if n == 0:
        raise ValueError("bootstrap: no test items")
    return arrays


def _mean_difference(arrays: list[tuple], statistic: Statistic, idx: np.ndarray | None):
    """Mean over seeds of statistic(b[idx]) - statistic(a[idx]); idx [r, n] or None (all)."""
    total = 0.0
    for a, b in arrays:
        if idx is None:
            total = total + (statistic(b) - statistic(a))
        else:
            total = total + (statistic(b[idx]) - statistic(a[idx]))
    return np.asarray(total, dtype=np.float64) / len(arrays)


def pooled_paired_bootstrap(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    statistic: Statistic,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Paired bootstrap CI of the seed-averaged difference statistic(b) - statistic(a).

    All seeds score the same test set, so one index draw [n] resamples the items of every
    seed jointly; the difference is averaged over seeds before taking percentiles.

    Args:
        pairs: s (a, b) pairs, each [n] or [n, k], aligned on the same n test items
            (a: the reference system, e.g. CE-only; b: the candidate).
        statistic: reduces the item axis of [..., n] or [..., n, k] (`mean`, `wer_percent`).
        n_resamples: r index draws.
        confidence: the CI's coverage, in (0, 1).
        seed: numpy Generator seed; the result is a function of it.

    Returns:
        {"diff": the difference on the full test set, "lo", "hi": percentile CI bounds,
        "n_items", "n_resamples", "confidence"}.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    arrays = _check_pairs(pairs)
    n = len(arrays[0][0])
    per_item = int(np.prod(arrays[0][0].shape[1:], dtype=np.int64)) * 2 * len(arrays)
    block = max(1, _BLOCK_ELEMENTS // (n * per_item))
    rng = np.random.default_rng(seed)
    diffs = []
    for start in range(0, n_resamples, block):
        idx = rng.integers(0, n, size=(min(block, n_resamples - start), n))
        diffs.append(_mean_difference(arrays, statistic, idx))
    tail = 100.0 * (1.0 - confidence) / 2.0
    lo, hi = np.percentile(np.concatenate(diffs), [tail, 100.0 - tail])
    return {
        "diff": float(_mean_difference(arrays, statistic, None)),
        "lo": float(lo),
        "hi": float(hi),
        "n_items": n,
        "n_resamples": n_resamples,
        "confidence": confidence,
    }


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    statistic: Statistic,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Paired bootstrap CI of statistic(b) - statistic(a) over the test items.

    Args:
        a, b: [n] or [n, k] per-item values of two systems on the same items, aligned
            (for WER each item is (errors, reference words); for CIDEr-D a per-clip score).
        statistic, n_resamples, confidence, seed: as `pooled_paired_bootstrap`.

    Returns:
        {"diff", "lo", "hi", "n_items", "n_resamples", "confidence"}.
    """
    return pooled_paired_bootstrap(
        [(a, b)], statistic, n_resamples=n_resamples, confidence=confidence, seed=seed
    )


# ---- reading the numbers ---------------------------------------------------------------------


def verdict(lo: float, hi: float, better: str) -> str:
    """The verdict "beats", "ties" or "loses" for a CI [lo, hi] of candidate minus reference.

    "ties" whenever the CI contains 0 (lo <= 0 <= hi); otherwise the sign decides, read
    through `better` ("lower" or "higher").
    """
    if better not in ("lower", "higher"):
        raise ValueError(f"better must be 'lower' or 'higher', got {better!r}")
    if lo > hi:
        raise ValueError(f"CI bounds out of order: lo {lo} > hi {hi}")
    if lo <= 0 <= hi:
        return "ties"
    improved = hi < 0 if better == "lower" else lo > 0
    return "beats" if improved else "loses"


def gap_closed(baseline: float | None, candidate: float | None, teacher: float | None):
    """Fraction of the baseline-to-teacher gap the candidate closed.

    (baseline - candidate) / (baseline - teacher): 1.0 at the teacher, 0.0 at the baseline,
    negative when worse than the baseline, above 1 when past the teacher. The formula holds
    for lower- and higher-is-better metrics alike (both signs flip together). None when a
    value is missing or baseline == teacher (no gap to close).
    """
    if baseline is None or candidate is None or teacher is None or baseline == teacher:
        return None
    gap = (baseline - candidate) / (baseline - teacher)
    return gap if gap != 0 else 0.0  # no "-0" in tables


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample std with ddof=1); the std of a single value is 0.0."""
    x = np.asarray(list(values), dtype=np.float64)
    if x.size == 0:
        raise ValueError("mean_std needs at least one value")
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else 0.0


# ---- per-item scores on disk -----------------------------------------------------------------


class MissingItemScores(DistillError, ValueError):
    """A predictions.jsonl carries no per-item scores (written before they existed)."""


def _predictions_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_file():
        return p
    for candidate in (p / "eval" / "predictions.jsonl", p / "predictions.jsonl"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"no predictions.jsonl under {p} (looked for {p / 'eval' / 'predictions.jsonl'} and "
        f"{p / 'predictions.jsonl'})"
    )


def load_item_scores(run_dir_or_eval_dir: str | os.PathLike) -> dict[str, dict[str, dict]]:
    """Per-item scores from a run's eval/predictions.jsonl: {task: {id: {field: value}}}.

    Fields are those `distill.eval.runner.evaluate_model` attaches: "errors" and
    "reference_words" for ASR, "cider_d" (and "spice", "spider") for captions. Items without
    references are skipped; a task none of whose items is scored is left out.

    Raises:
        FileNotFoundError: no predictions.jsonl at the path.
        MissingItemScores: naming the file, when no item carries per-item fields or a task
            has scored items next to unscored ones with references.
    """
    from distill.eval.io import read_jsonl

    path = _predictions_path(run_dir_or_eval_dir)
    tasks: dict[str, dict[str, dict]] = {}
    unscored: dict[str, list[str]] = {}
    for rec in read_jsonl(path):
        fields = {k: rec[k] for k in ITEM_FIELDS if rec.get(k) is not None}
        task, tid = rec.get("task", "?"), str(rec.get("testset_id"))
        if fields:
            tasks.setdefault(task, {})[tid] = fields
        elif rec.get("references"):
            unscored.setdefault(task, []).append(tid)
    if not tasks:
        raise MissingItemScores(
            f"{path} has no per-item scores (fields {', '.join(ITEM_FIELDS)}); re-run the "
            "evaluation with this version of distill to get confidence intervals"
        )
    partial = {t: ids for t, ids in unscored.items() if t in tasks}
    if partial:
        t, ids = next(iter(partial.items()))
        raise MissingItemScores(
            f"{path}: task {t!r} has {len(ids)} items with references but no per-item "
            f"scores (e.g. {ids[:5]}) next to {len(tasks[t])} scored ones"
        )
    return tasks


def load_answers(run_dir_or_eval_dir: str | os.PathLike) -> dict[str, dict[str, str]]:
    """Each item's answer from a run's eval/predictions.jsonl: {task: {id: text}}.

    Raises:
        FileNotFoundError: no predictions.jsonl at the path.
    """
    from distill.eval.io import read_jsonl

    path = _predictions_path(run_dir_or_eval_dir)
    tasks: dict[str, dict[str, str]] = {}
    for rec in read_jsonl(path):
        text = rec.get("text")
        tasks.setdefault(rec.get("task", "?"), {})[str(rec.get("testset_id"))] = (
            "" if text is None else str(text)
        )
    return tasks


def agreement(answers: Mapping[str, str], reference: Mapping[str, str]) -> tuple[float, int]:
    """Fidelity (Stanton et al. 2021): the share of the items both sides answered whose
    answers are the same words, and how many items were compared.

    Answers are compared after WER's normalisation (`distill.eval.asr.normalize_for_wer`:
    case, punctuation and spacing do not count), so "A dog barks." and "a dog barks" agree.
    A distilled student that learned its teacher answers like it more often than one
    trained on labels alone, whether or not the answers are right.

    Raises:
        ValueError: the two share no item.
    """
    from distill.eval.asr import normalize_for_wer

    common = [i for i in answers if i in reference]
    if not common:
        raise ValueError(
            f"no common items to compare ({len(answers)} answers against {len(reference)}; "
            "were both evaluated on the same test set?)"
        )
    same = sum(normalize_for_wer(answers[i]) == normalize_for_wer(reference[i]) for i in common)
    return same / len(common), len(common)


def item_array(scores: Mapping[str, Mapping], metric: str, ids: Sequence[str] | None = None):
    """Per-item values of one metric as an array in `ids` order (default: `scores` order).

    Returns:
        [n, 2] (errors, reference words) for "wer"; [n] for a per-clip score.

    Raises:
        KeyError: naming the ids that `scores` lacks, or the metric absent from an item.
    """
    ids = list(scores) if ids is None else list(ids)
    missing = [i for i in ids if i not in scores]
    if missing:
        raise KeyError(f"{len(missing)} test items have no per-item score: {missing[:10]}")
    fields = ("errors", "reference_words") if metric == "wer" else (metric,)
    lacking = [i for i in ids if any(f not in scores[i] for f in fields)]
    if lacking:
        raise KeyError(f"per-item {metric!r} missing for {len(lacking)} items: {lacking[:10]}")
    rows = [[scores[i][f] for f in fields] for i in ids]
    out = np.asarray(rows, dtype=np.float64)
    return out if metric == "wer" else out[:, 0]


def aligned_items(
    reference: Mapping[str, Mapping], candidate: Mapping[str, Mapping], metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) item arrays of two runs on the same test items, in the reference's order.

    Raises:
        ValueError: when the runs scored different item sets (they must share a test set).
    """
    only_a = [i for i in reference if i not in candidate]
    only_b = [i for i in candidate if i not in reference]
    if only_a or only_b:
        raise ValueError(
            f"the runs scored different test items: {len(only_a)} only in the reference "
            f"{only_a[:5]}, {len(only_b)} only in the candidate {only_b[:5]}"
        )
    ids = list(reference)
    return item_array(reference, metric, ids), item_array(candidate, metric, ids)


def compare_items(
    reference: Mapping[str, Mapping], candidate: Mapping[str, Mapping], metric: str, **kwargs
) -> dict:
    """Paired bootstrap of candidate minus reference on one metric, plus its verdict.

    Args:
        reference, candidate: {id: per-item fields} of one task (`load_item_scores(...)[task]`).
        metric: a key of `METRICS` ("wer" in percent points, "cider_d", "spice", "spider").
        **kwargs: n_resamples, confidence, seed for `paired_bootstrap`.

    Returns:
        The `paired_bootstrap` dict plus "verdict" ("beats" / "ties" / "loses").
    """
    statistic, better = METRICS[metric]
    a, b = aligned_items(reference, candidate, metric)
    ci = paired_bootstrap(a, b, statistic, **kwargs)
    return {**ci, "verdict": verdict(ci["lo"], ci["hi"], better)}


def format_ci(ci: Mapping, digits: int = 3) -> str:
    """'95% CI [-7.1, -2.9]' for a bootstrap result."""
    level = round(100 * ci["confidence"])
    return f"{level}% CI [{ci['lo']:+.{digits}g}, {ci['hi']:+.{digits}g}]"
