"""The study table for 2 arms x 3 seeds + a teacher, from fake run dirs, checked by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from distill import stats
from distill.study_report import write_study_report

WORDS = 10  # per utterance; 20 utterances, 10 clips
# errors per utterance. CE: 20, 30, 25 %. KD seed 0 and 2: one error fewer on every utterance
# (a zero-width CI at -10 points: beats); KD seed 1: 1 or 5 errors where CE has 3 (same 30 %,
# differences of +-20 points per utterance: ties).
ERRORS = {
    ("ce", 0): [2] * 20,
    ("ce", 1): [3] * 20,
    ("ce", 2): [2, 3] * 10,
    ("kd", 0): [1] * 20,
    ("kd", 1): [1, 5] * 10,
    ("kd", 2): [1, 2] * 10,
    ("teacher", 0): [1] * 20,
}
# per-clip CIDEr-D: KD swaps CE's clip scores, so both average 0.3 and every seed ties
CIDER = {"ce": [0.2, 0.4] * 5, "kd": [0.4, 0.2] * 5, "teacher": [0.5] * 10}


def make_run(root: Path, arm: str, seed: int) -> Path:
    run = root / f"{arm}-s{seed}"
    (run / "eval").mkdir(parents=True)
    errors, cider = ERRORS[(arm, seed)], CIDER[arm]
    metrics = {
        "model": {"name": arm, "role": {"ce": "baseline", "kd": "student"}.get(arm, arm)},
        "seed": seed,
        "accuracy": {
            "asr": {"metric": "wer", "wer_percent": 100.0 * sum(errors) / (WORDS * len(errors))},
            "audiocaption_v2": {"metrics": ["cider_d"], "cider_d": float(np.mean(cider))},
        },
    }
    (run / "eval" / "metrics.json").write_text(json.dumps(metrics))
    rows = [
        {
            "testset_id": f"a{i:02d}",
            "task": "asr",
            "text": "x",
            "references": ["y"],
            "errors": e,
            "reference_words": WORDS,
        }
        for i, e in enumerate(errors)
    ]
    rows += [{"testset_id": f"c{i:02d}", "task": "audiocaption_v2", "text": "x",
              "references": ["y"], "cider_d": c} for i, c in enumerate(cider)]  # fmt: skip
    (run / "eval" / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    arms = {arm: [str(make_run(root, arm, s)) for s in range(3)] for arm in ("ce", "kd")}
    teacher = make_run(root, "teacher", 0)
    out = write_study_report(
        arms, root / "out", baseline="ce", teacher=str(teacher), title="KD vs CE", setting="tiny"
    )
    return out, json.loads((out / "study.json").read_text())


def _metric(summary, key):
    return next(m for m in summary["metrics"] if m["key"] == key)


def test_files_exist_and_return_the_out_dir(study):
    out, summary = study
    for name in ("study.md", "study.html", "study.png", "study.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert summary["n_seeds"] == 3 and summary["seeds"] == [0, 1, 2]
    assert summary["baseline"] == "ce" and summary["bootstrap"]["n_resamples"] == 2000
    assert 'src="data:image/png;base64,' in (out / "study.html").read_text()


def test_wer_numbers_match_hand_computation(study):
    wer = _metric(study[1], "asr/wer")
    assert wer["better"] == "lower" and wer["teacher"] == pytest.approx(10.0)
    ce, kd = wer["arms"]["ce"], wer["arms"]["kd"]
    assert ce["values"] == pytest.approx([20.0, 30.0, 25.0])
    assert (ce["mean"], ce["std"]) == pytest.approx((25.0, 5.0))
    assert kd["values"] == pytest.approx([10.0, 30.0, 15.0])
    assert kd["mean"] == pytest.approx(55 / 3)
    assert kd["std"] == pytest.approx(np.std([10, 30, 15], ddof=1))  # 10.408
    seeds = kd["per_seed"]
    assert [s["verdict"] for s in seeds] == ["beats", "ties", "beats"]
    assert (seeds[0]["diff"], seeds[0]["lo"], seeds[0]["hi"]) == pytest.approx((-10, -10, -10))
    assert seeds[1]["diff"] == pytest.approx(0.0) and seeds[1]["lo"] < 0 < seeds[1]["hi"]
    # (CE - KD) / (CE - teacher): (20-10)/(20-10), (30-30)/(30-10), (25-15)/(25-10)
    assert [s["gap_closed"] for s in seeds] == pytest.approx([1.0, 0.0, 2 / 3])
    assert kd["gap_closed_mean"] == pytest.approx(5 / 9)
    assert (kd["beats"], kd["n_seeds"]) == (2, 3)


def test_pooled_ci_resamples_items_jointly_over_seeds(study):
    kd = _metric(study[1], "asr/wer")["arms"]["kd"]
    pairs = [
        (np.stack([ERRORS[("ce", s)], [WORDS] * 20], 1), np.stack([ERRORS[("kd", s)], [WORDS] * 20], 1))
        for s in range(3)
    ]  # fmt: skip
    ref = stats.pooled_paired_bootstrap(pairs, stats.wer_percent, seed=0)
    pooled = kd["pooled"]
    assert pooled["diff"] == pytest.approx(-20 / 3)  # mean of -10, 0, -10
    assert (pooled["lo"], pooled["hi"]) == pytest.approx((ref["lo"], ref["hi"]))
    assert pooled["hi"] < 0 and pooled["verdict"] == "beats"


def test_overlapping_arms_tie(study):
    out, summary = study
    cider = _metric(summary, "audiocaption_v2/cider_d")
    kd = cider["arms"]["kd"]
    assert kd["mean"] == pytest.approx(0.3) and kd["std"] == pytest.approx(0.0)
    assert [s["verdict"] for s in kd["per_seed"]] == ["ties"] * 3
    assert kd["pooled"]["verdict"] == "ties" and kd["pooled"]["lo"] < 0 < kd["pooled"]["hi"]
    assert kd["gap_closed_mean"] == pytest.approx(0.0) and kd["beats"] == 0
    md = (out / "study.md").read_text()
    assert "## audiocaption_v2: CIDEr-D (higher is better; teacher 0.5)" in md
    assert "| ties | beats in 0/3 seeds | 0 | 0, 0, 0 |" in md
    assert "| beats | beats in 2/3 seeds | 0.556 | 1, 0, 0.667 |" in md
    assert "| kd | 0 | 10 | 20 | -10 | 95% CI [-10, -10] | beats | 1 |" in md
    assert "| ce (CE-only) | 25 ± 5 | 20, 30, 25 |" in md


def test_mismatched_arms_raise(tmp_path):
    runs = [str(make_run(tmp_path, "ce", s)) for s in range(3)]
    kd = [str(make_run(tmp_path, "kd", s)) for s in range(2)]
    with pytest.raises(ValueError, match="same \\(non-zero\\) number of seeds"):
        write_study_report({"ce": runs, "kd": kd}, tmp_path / "o", baseline="ce", teacher=None,
                           title="t")  # fmt: skip
    with pytest.raises(ValueError, match="seeds \\[1, 0\\], the baseline arm \\[0, 1\\]"):
        write_study_report({"ce": runs[:2], "kd": kd[::-1]}, tmp_path / "o", baseline="ce",
                           teacher=None, title="t")  # fmt: skip
    with pytest.raises(ValueError, match="baseline arm 'nope'"):
        write_study_report({"ce": runs}, tmp_path / "o", baseline="nope", teacher=None, title="t")


def test_agreement_counts_same_words_and_needs_common_items():
    a = {"1": "A dog barks.", "2": "a cat", "3": "rain", "4": "x"}
    t = {"1": "a dog  barks", "2": "a bird", "3": "Rain!", "5": "y"}
    assert stats.agreement(a, t) == (pytest.approx(2 / 3), 3)  # items 1 and 3 of 1, 2, 3
    with pytest.raises(ValueError, match="no common items"):
        stats.agreement({"9": "x"}, t)


def test_study_reports_each_arms_agreement_with_the_teacher(tmp_path):
    def answers(run: Path, texts: dict[str, str]) -> None:
        rows = [json.loads(line) for line in (run / "eval" / "predictions.jsonl").open()]
        for r in rows:
            r["text"] = texts.get(r["testset_id"], r["text"])
        (run / "eval" / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    teacher = make_run(tmp_path, "teacher", 0)
    answers(teacher, {f"c{i:02d}": f"sound {i}" for i in range(10)})
    arms = {arm: [make_run(tmp_path, arm, s) for s in range(3)] for arm in ("ce", "kd")}
    for s, run in enumerate(arms["kd"]):  # kd says the teacher's caption for 5 + s clips
        answers(run, {f"c{i:02d}": f"Sound {i}." for i in range(5 + s)})
    # ce's answer "x" is the teacher's on every ASR item, on no caption
    out = write_study_report({k: [str(r) for r in v] for k, v in arms.items()}, tmp_path / "o",
                             baseline="ce", teacher=str(teacher), title="t")  # fmt: skip
    agree = json.loads((out / "study.json").read_text())["teacher_agreement"]
    assert agree["asr"]["ce"]["values"] == pytest.approx([100.0] * 3)
    assert agree["audiocaption_v2"]["ce"]["values"] == pytest.approx([0.0] * 3)
    kd = agree["audiocaption_v2"]["kd"]
    assert kd["values"] == pytest.approx([50.0, 60.0, 70.0]) and kd["items"] == 10
    assert (kd["mean"], kd["std"]) == pytest.approx((60.0, 10.0))
    md = (out / "study.md").read_text()
    assert "## Agreement with the teacher" in md
    assert "| ce (CE-only) | 100 ± 0 | 0 ± 0 | 100, 100, 100 | 0, 0, 0 |" in md
    assert "| kd | 100 ± 0 | 60 ± 10 | 100, 100, 100 | 50, 60, 70 |" in md
    assert 'id="agreement"' in (out / "study.html").read_text()
    # without a teacher there is nothing to agree with
    out = write_study_report({k: [str(r) for r in v] for k, v in arms.items()}, tmp_path / "n",
                             baseline="ce", teacher=None, title="t")  # fmt: skip
    assert json.loads((out / "study.json").read_text())["teacher_agreement"] == {}
    assert "Agreement with the teacher" not in (out / "study.md").read_text()
