"""The student-versus-teacher report for three tiny fake runs, checked in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from distill import stats
from distill.cli import main as distill_main
from distill.report import flatten_metrics, write_report

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)


def fake_metrics(name, role, wer, cider, ttft, mem, params, tpot=0.011):
    return {
        "schema": "distill.eval/1",
        "model": {"name": name, "role": role, "params_total": params, "params_trainable": params // 10,
                  "size_on_disk_bytes": params * 2},  # fmt: skip
        "accuracy": {
            "asr": {"metric": "wer", "wer": wer / 100, "wer_percent": wer, "substitutions": 3,
                    "worst": [{"id": "test0001", "errors": 2, "hypothesis": "helo", "reference": "hello"}]},
            "audiocaption_v2": {"metrics": ["cider_d"], "cider_d": cider, "field_cider_d_x100": cider * 90},
        },  # fmt: skip
        "decoding": {"num_beams": 4, "max_new_tokens": 200, "batch_size": 8},
        "efficiency": {
            "baseline": {"ttft_s": ttft, "tpot_s": ttft / 10, "inference_s": ttft * 1.1,
                         "memory_gb": mem, "memory_kind": "cuda_max_allocated"},
            "strict": {"ttft_s": ttft * 1.2, "ttft_s_p10": ttft * 1.19, "ttft_s_p90": ttft * 1.21,
                       "tpot_s": tpot, "tpot_s_p10": tpot - 0.002, "tpot_s_p90": tpot + 0.002,
                       "inference_s": ttft * 1.3, "memory_gb": mem * 0.9,
                       "memory_kind": "cuda_max_allocated", "rtfx": 30 / ttft},
        },  # fmt: skip
        "hardware": {"gpu": "fake"}, "versions": {"torch": "2.9.1"},
    }  # fmt: skip


# per-item scores behind the corpus values above: 40 utterances of 10 words, 20 clips
ASR_ERRORS = {"teacher": [1] * 40, "baseline": [2] * 40, "ddat": [1, 2] * 20}  # 10, 20, 15 %
CLIP_CIDER = {
    "teacher": [0.5] * 20,
    "baseline": [0.1, 0.5] * 10,  # mean 0.3
    "ddat": [0.6, 0.0, 0.3, 0.1] * 5,  # mean 0.25; the clip differences straddle 0
}


def write_predictions(run: Path, key: str) -> None:
    rows = [
        {
            "testset_id": f"a{i:02d}",
            "task": "asr",
            "text": "x",
            "references": ["y"],
            "errors": e,
            "reference_words": 10,
        }
        for i, e in enumerate(ASR_ERRORS[key])
    ]
    rows += [{"testset_id": f"c{i:02d}", "task": "audiocaption_v2", "text": "x",
              "references": ["y"], "cider_d": c} for i, c in enumerate(CLIP_CIDER[key])]  # fmt: skip
    (run / "eval" / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_run(root: Path, name, role, metrics, *, log_terms=None, config=None, items=None) -> Path:
    run = root / name
    (run / "eval").mkdir(parents=True)
    (run / "model").mkdir()
    (run / "eval" / "metrics.json").write_text(json.dumps(metrics))
    if items is not None:
        write_predictions(run, items)
    if config is not None:
        (run / "config.yaml").write_text(config)
    if log_terms:
        with (run / "train_log.jsonl").open("w") as f:
            for step in range(0, 50, 5):
                row = {"step": step, "lr": 1e-4 * min(1, (step + 1) / 10)}
                row.update({t: 3.0 / (1 + step / s) for t, s in log_terms.items()})
                f.write(json.dumps(row) + "\n")
    return run


def build_three_runs(tmp_path: Path) -> list[Path]:
    student = "tiny-student"
    t = make_run(
        tmp_path,
        "teacher",
        "teacher",
        fake_metrics("tiny-teacher", "teacher", 10.0, 0.5, 0.2, 8.0, 7_000_000, tpot=0.010),
        items="teacher",
    )
    b = make_run(
        tmp_path, "baseline", "baseline", fake_metrics(student, "baseline", 20.0, 0.3, 0.05, 2.0, 1_000_000),
        log_terms={"loss": 10, "ce": 10}, items="baseline",
        config="seed: 0\nteacher: null\nloss: {_component_: losses.CE}\ndata: {test: test.json}\n",
    )  # fmt: skip
    d = make_run(
        tmp_path, "ddat", "student", fake_metrics(student, "student", 15.0, 0.25, 0.05, 2.0, 1_000_000),
        log_terms={"loss": 8, "ce": 9, "kl": 5}, items="ddat",
        config="seed: 1\nloss: {_component_: losses.DDAT}\n",
    )  # fmt: skip
    return [t, b, d]


@pytest.fixture
def three_runs(tmp_path):
    return build_three_runs(tmp_path)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The report of the three runs, written once for the tests that only read it."""
    root = tmp_path_factory.mktemp("runs")
    return write_report(build_three_runs(root), root / "report", teacher="teacher")


def test_flatten_names_every_metric():
    table = flatten_metrics(fake_metrics("m", "student", 12.0, 0.4, 0.1, 3.0, 100))
    assert table["asr/wer"].label == "asr: WER %" and table["asr/wer"].better == "lower"
    assert table["audiocaption_v2/cider_d"].label == "audiocaption_v2: CIDEr-D"
    assert "SPIDEr" not in table["audiocaption_v2/cider_d"].label
    assert "the field's 'SPIDEr' label" in table["audiocaption_v2/field_cider_d_x100"].label
    assert table["baseline/memory_gb"].label == "[baseline] memory GiB (cuda_max_allocated)"
    assert table["strict/rtfx"].better == "higher"


def test_report_files_ratios_and_verdicts(report):
    out = report
    for name in (
        "report.md",
        "report.html",
        "metrics.json",
        "training_curves.png",
        "metrics_bars.png",
        "tradeoff.png",
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["teacher"] == "teacher" and summary["baseline"] == "baseline"
    wer = next(r for r in summary["rows"] if r["key"] == "asr/wer")
    assert wer["teacher"] == 10.0 and wer["ratios"] == {"baseline": 2.0, "ddat": 1.5}
    mem = next(r for r in summary["rows"] if r["key"] == "baseline/memory_gb")
    assert mem["ratios"]["ddat"] == pytest.approx(0.25)
    verdicts = summary["verdicts"]
    assert verdicts[0].startswith(
        "asr: WER %: distilled `ddat` (15) beats the CE-only baseline `baseline` (20); "
        "difference -5, 95% CI ["
    )
    assert verdicts[1].startswith(
        "audiocaption_v2: CIDEr-D: distilled `ddat` (0.25) ties the CE-only baseline "
        "`baseline` (0.3); difference -0.05, 95% CI ["
    )
    assert "gap closed 0.50" in verdicts[0] and "gap closed -0.25" in verdicts[1]
    md = (out / "report.md").read_text()
    assert "| asr: WER % | lower | 10 | 20 | 15 | 2 | 1.5 |" in md
    assert "| audiocaption_v2: CIDEr-D | higher | ddat | 0.25 | 0.3 | -0.05 | 95% CI [" in md
    assert "| ties | -0.25 |" in md and "| beats | 0.5 |" in md
    assert "![training_curves](training_curves.png)" in md
    assert "losses.DDAT" in md and "seed: 1" in md


def test_comparisons_follow_the_paired_bootstrap(report):
    """WER: every utterance of ddat has 0 or 1 fewer errors of 10 words, so the CI is
    strictly negative (beats); CIDEr-D: the clip differences (+0.5, -0.5, +0.2, -0.4) straddle
    0, so the CI contains 0 (ties) although the corpus values differ by -0.05."""
    out = report
    comp = {c["metric"]: c for c in json.loads((out / "metrics.json").read_text())["comparisons"]}
    assert set(comp) == {"asr/wer", "audiocaption_v2/cider_d"}
    wer, cider = comp["asr/wer"], comp["audiocaption_v2/cider_d"]
    pairs = {k: np.stack([ASR_ERRORS[k], [10] * 40], axis=1) for k in ("baseline", "ddat")}
    ref = stats.paired_bootstrap(pairs["baseline"], pairs["ddat"], stats.wer_percent)
    assert (wer["diff"], wer["lo"], wer["hi"]) == pytest.approx((-5.0, ref["lo"], ref["hi"]))
    assert wer["hi"] < 0 and wer["verdict"] == "beats" and wer["n_items"] == 40
    assert wer["gap_closed"] == pytest.approx(0.5)  # (20 - 15) / (20 - 10)
    assert cider["diff"] == pytest.approx(-0.05) and cider["lo"] < 0 < cider["hi"]
    assert cider["verdict"] == "ties"
    assert cider["gap_closed"] == pytest.approx(-0.25)  # (0.3 - 0.25) / (0.3 - 0.5)
    html = (out / "report.html").read_text()
    assert '<table id="comparisons">' in html and "<td>ties</td>" in html


def test_efficiency_ratios_within_the_spread_are_noise(report):
    """strict TPOT: student 0.011 vs teacher 0.010 with p90 - p10 = 0.004 each -> noise;
    strict TTFT: 0.06 vs 0.24 with spreads 0.001 and 0.005 -> a real difference."""
    out = report
    rows = {r["key"]: r for r in json.loads((out / "metrics.json").read_text())["rows"]}
    assert rows["strict/tpot_s"]["noise"] == {"baseline": True, "ddat": True}
    assert rows["strict/tpot_s"]["ratios"]["ddat"] == pytest.approx(1.1)
    assert rows["strict/ttft_s"]["noise"] == {"baseline": False, "ddat": False}
    assert rows["baseline/ttft_s"]["noise"] == {"baseline": None, "ddat": None}  # no spread
    md = (out / "report.md").read_text()
    assert (
        "| [strict] TPOT s median | lower | 0.01 | 0.011 | 0.011 | 1.1 (noise) | 1.1 (noise) |"
        in md
    )


def test_no_per_item_scores_means_no_ci_not_a_crash(tmp_path):
    runs = [
        make_run(tmp_path, "teacher", "teacher", fake_metrics("t", "teacher", 10.0, 0.5, 0.2, 8.0, 7)),
        make_run(tmp_path, "baseline", "baseline", fake_metrics("s", "baseline", 20.0, 0.3, 0.05, 2.0, 1)),
        make_run(tmp_path, "ddat", "student", fake_metrics("s", "student", 15.0, 0.25, 0.05, 2.0, 1)),
    ]  # fmt: skip
    out = write_report(runs, tmp_path / "report", teacher="teacher")
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["verdicts"][0].startswith(
        "asr: WER %: distilled `ddat` (15) vs the CE-only baseline `baseline` (20): "
        "difference -5 (lower is better); gap closed 0.50; no per-item scores: no CI"
    )
    assert summary["verdicts"][0].endswith(", so no verdict.")
    wer = summary["comparisons"][0]
    assert (wer["verdict"], wer["lo"], wer["gap_closed"]) == (None, None, 0.5)
    assert "no per-item scores: no CI | no verdict | 0.5 |" in (out / "report.md").read_text()


def test_training_curves_skip_constant_series(tmp_path):
    from distill.report import load_run
    from distill.report_plots import curve_terms

    run = make_run(tmp_path, "r", "student", fake_metrics("s", "student", 5.0, 0.6, 0.1, 1.0, 10))
    rows = [{"step": s, "loss": 3.0 / (1 + s), "kl/loss": 1.0 / (1 + s), "kl/weight": 0.5,
             "lr": 1e-4, "grad_norm": 1.0 + s % 3} for s in range(10)]  # fmt: skip
    (run / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert curve_terms([load_run(run)]) == ["loss", "kl/loss", "grad_norm"]
    # a one-term loss logs its term twice (ctc/ctc == ctc/loss): one panel; a composed
    # term whose total differs from its parts keeps both
    for r in rows:
        r.update({"ctc/ctc": r["kl/loss"] / 2, "ctc/loss": r["kl/loss"] / 2,
                  "mix/a": r["loss"], "mix/loss": r["loss"] + r["grad_norm"]})  # fmt: skip
    (run / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert curve_terms([load_run(run)]) == [
        "loss",
        "kl/loss",
        "grad_norm",
        "ctc/ctc",
        "mix/a",
        "mix/loss",
    ]


def test_teacher_found_by_role_and_cli(tmp_path, three_runs):
    out = write_report(three_runs[::-1], tmp_path / "r1")  # no teacher=: role "teacher" is used
    assert json.loads((out / "metrics.json").read_text())["teacher"] == "teacher"
    rc = distill_main(
        [
            "report",
            *map(str, three_runs),
            "--out",
            str(tmp_path / "r2"),
            "--teacher",
            "tiny-teacher",
        ]
    )
    assert rc == 0 and (tmp_path / "r2" / "report.html").is_file()
    with pytest.raises(ValueError, match="no run named 'nobody'"):
        write_report(three_runs, tmp_path / "r3", teacher="nobody")


def test_runs_without_logs_or_teacher_still_render(tmp_path):
    only = make_run(
        tmp_path, "solo", "student", fake_metrics("s", "student", 5.0, 0.6, 0.1, 1.0, 10)
    )
    out = write_report([only], tmp_path / "rep")
    md = (out / "report.md").read_text()
    assert "Teacher: `none given`" in md and "No CE-only baseline run" in md
    assert not (out / "training_curves.png").exists()


def test_pseudo_label_filter_stats_are_shown(tmp_path):
    """A train manifest with <stem>.stats.json beside it (distill cache --pseudo-labels)
    gets a Pseudo-labels table: kept, dropped and why, with the thresholds."""
    import json

    manifest = tmp_path / "pl" / "pseudo_labels.json"
    manifest.parent.mkdir()
    manifest.write_text("[]")
    manifest.with_suffix(".stats.json").write_text(json.dumps(
        {"items": 40, "kept": 31, "dropped_empty": 2, "dropped_wer": 5, "dropped_logprob": 2,
         "max_wer": 0.1, "min_logprob": -1.5}))  # fmt: skip
    cfg = f"seed: 0\nloss: {{_component_: losses.CE}}\ndata: {{train: [{manifest}, other.json]}}\n"
    run = make_run(tmp_path, "seqkd", "student",
                   fake_metrics("s", "student", 5.0, 0.6, 0.1, 1.0, 10), config=cfg)  # fmt: skip
    plain = make_run(tmp_path, "plain", "student",
                     fake_metrics("p", "student", 6.0, 0.5, 0.1, 1.0, 10))  # fmt: skip
    out = write_report([run, plain], tmp_path / "rep")
    md = (out / "report.md").read_text()
    assert "## Pseudo-labels" in md
    assert "| seqkd | pseudo_labels.json | 40 | 31 | 2 | 5 | 2 | 0.1 | -1.5 |" in md
    assert "| plain |" not in md.split("## Pseudo-labels")[1].split("##")[0]
    assert 'id="pseudo-labels"' in (out / "report.html").read_text()
    assert (
        "## Pseudo-labels" not in (write_report([plain], tmp_path / "r2") / "report.md").read_text()
    )


@pytest.mark.skipif(
    CHROMIUM is None, reason="/usr/bin/chromium is absent (apt-get install -y chromium)"
)
def test_html_renders_in_headless_chromium(tmp_path, three_runs):
    out = write_report(three_runs, tmp_path / "report", teacher="teacher")
    html = (out / "report.html").resolve()
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    dom = subprocess.run(
        flags + ["--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    assert len(re.findall(r'<img alt="[a-z_]+" src="data:image/png;base64,', dom)) == 3
    assert '<table id="metrics">' in dom and dom.count("<tr>") > 10
    assert "run-ddat" in dom and "beats the CE-only baseline" in dom
    shot = tmp_path / "shot.png"
    subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1200,2000", html.as_uri()],
                   capture_output=True, timeout=120)  # fmt: skip
    assert shot.is_file() and shot.stat().st_size > 10_000
