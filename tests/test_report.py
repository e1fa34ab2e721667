"""The student-versus-teacher report for three tiny fake runs, checked in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from distill.cli import main as distill_main
from distill.report import flatten_metrics, write_report

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)


def fake_metrics(name, role, wer, cider, ttft, mem, params):
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
            "strict": {"ttft_s": ttft * 1.2, "tpot_s": ttft / 8, "inference_s": ttft * 1.3,
                       "memory_gb": mem * 0.9, "memory_kind": "cuda_max_allocated", "rtfx": 30 / ttft},
        },  # fmt: skip
        "hardware": {"gpu": "fake"}, "versions": {"torch": "2.9.1"},
    }  # fmt: skip


def make_run(root: Path, name, role, metrics, *, log_terms=None, config=None) -> Path:
    run = root / name
    (run / "eval").mkdir(parents=True)
    (run / "model").mkdir()
    (run / "eval" / "metrics.json").write_text(json.dumps(metrics))
    if config is not None:
        (run / "config.yaml").write_text(config)
    if log_terms:
        with (run / "train_log.jsonl").open("w") as f:
            for step in range(0, 50, 5):
                row = {"step": step, "lr": 1e-4 * min(1, (step + 1) / 10)}
                row.update({t: 3.0 / (1 + step / s) for t, s in log_terms.items()})
                f.write(json.dumps(row) + "\n")
    return run


@pytest.fixture
def three_runs(tmp_path):
    student = "tiny-student"
    t = make_run(
        tmp_path,
        "teacher",
        "teacher",
        fake_metrics("tiny-teacher", "teacher", 10.0, 0.5, 0.2, 8.0, 7_000_000),
    )
    b = make_run(
        tmp_path, "baseline", "baseline", fake_metrics(student, "baseline", 20.0, 0.3, 0.05, 2.0, 1_000_000),
        log_terms={"loss": 10, "ce": 10},
        config="seed: 0\nteacher: null\nloss: {_component_: losses.CE}\ndata: {test: test.json}\n",
    )  # fmt: skip
    d = make_run(
        tmp_path, "ddat", "student", fake_metrics(student, "student", 15.0, 0.25, 0.05, 2.0, 1_000_000),
        log_terms={"loss": 8, "ce": 9, "kl": 5}, config="seed: 1\nloss: {_component_: losses.DDAT}\n",
    )  # fmt: skip
    return [t, b, d]


def test_flatten_names_every_metric():
    table = flatten_metrics(fake_metrics("m", "student", 12.0, 0.4, 0.1, 3.0, 100))
    assert table["asr/wer"].label == "asr: WER %" and table["asr/wer"].better == "lower"
    assert table["audiocaption_v2/cider_d"].label == "audiocaption_v2: CIDEr-D"
    assert "SPIDEr" not in table["audiocaption_v2/cider_d"].label
    assert "the field's 'SPIDEr' label" in table["audiocaption_v2/field_cider_d_x100"].label
    assert table["baseline/memory_gb"].label == "[baseline] memory GiB (cuda_max_allocated)"
    assert table["strict/rtfx"].better == "higher"


def test_report_files_ratios_and_verdicts(tmp_path, three_runs):
    out = write_report(three_runs, tmp_path / "report", teacher="teacher")
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
    assert (
        "asr: WER %: distilled `ddat` (15) beat the CE-only baseline `baseline` (20); difference -5"
        in verdicts[0]
    )
    assert any(
        v.startswith("audiocaption_v2: CIDEr-D: distilled `ddat` (0.25) did not beat")
        for v in verdicts
    )
    md = (out / "report.md").read_text()
    assert "| asr: WER % | lower | 10 | 20 | 15 | 2 | 1.5 |" in md
    assert "![training_curves](training_curves.png)" in md
    assert "losses.DDAT" in md and "seed: 1" in md


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
    assert "run-ddat" in dom and "beat the CE-only baseline" in dom
    shot = tmp_path / "shot.png"
    subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1200,2000", html.as_uri()],
                   capture_output=True, timeout=120)  # fmt: skip
    assert shot.is_file() and shot.stat().st_size > 10_000
