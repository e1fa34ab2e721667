"""`distill demo --quick` end to end, and the examples, which must never rot."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT))


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "distill.cli", "demo", "--quick", "--out", str(out), "--no-progress"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = out / "report"
    for name in ("report.md", "report.html", "metrics.json", "training_curves.png"):
        assert (report / name).is_file(), name
    summary = json.loads((report / "metrics.json").read_text())
    assert {r["name"] for r in summary["runs"]} == {"teacher", "student_ce", "student_kd"}
    assert summary["teacher"] == "teacher" and summary["baseline"] == "student_ce"
    text = (report / "report.md").read_text()
    assert (
        "wer" in text.lower() and "cider" in text.lower() and "SPIDEr" not in text.split("CIDEr")[0]
    )
    for run in ("teacher", "student_ce", "student_kd"):
        metrics = json.loads((out / run / "eval" / "metrics.json").read_text())
        assert metrics["accuracy"]["asr"]["metric"] == "wer"
        assert metrics["efficiency"]["baseline"]["ttft_s"] > 0
    assert "report:" in proc.stdout
    # a second run reuses every finished stage
    again = subprocess.run(
        [sys.executable, "-m", "distill.cli", "demo", "--quick", "--out", str(out), "--no-progress"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert again.returncode == 0 and again.stdout.count("reusing") == 3


@pytest.mark.slow
def test_quickstart_script(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), str(tmp_path / "qs")],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "qs" / "report" / "report.html").is_file()


@pytest.mark.slow
def test_quickstart_notebook(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "examples" / "quickstart.ipynb", as_version=4)
    os.environ["PYTHONPATH"] = str(ROOT)
    client = NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    assert (tmp_path / "quickstart_run" / "report" / "report.md").is_file()
    outputs = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "student_kd" in outputs
