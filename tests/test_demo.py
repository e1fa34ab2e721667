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


def _cli(*args, cwd, timeout=900):
    return subprocess.run(
        [sys.executable, "-m", "distill.cli", *args, "--no-progress"],
        cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _readme_table() -> list[str]:
    text = (ROOT / "README.md").read_text()
    start, end = "<!-- demo-figures:start -->", "<!-- demo-figures:end -->"
    assert start in text and end in text, "README.md lost its demo figures table markers"
    body = text.split(start, 1)[1].split(end, 1)[0]
    return [line for line in body.splitlines() if line.startswith("|")]


def _shape(cell: str) -> str:
    """A cell's form: numbers, n/a and verdicts become X, so '4.6 ± 0.3' ~ '12.1 ± 1.0'."""
    import re

    cell = re.sub(r"[-+]?\d+(\.\d+)?|n/a|beats|ties|loses", "X", cell.strip())
    return cell.replace(" %", "")


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = _cli("demo", "--quick", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = out / "report"
    for name in ("report.md", "report.html", "metrics.json", "training_curves.png"):
        assert (report / name).is_file(), name
    for name in ("study.md", "study.html", "study.png", "study.json"):
        assert (report / "seeds" / name).is_file(), name
    from distill.demo.arms import BEST

    summary = json.loads((report / "metrics.json").read_text())
    assert {r["name"] for r in summary["runs"]} == {"teacher", "ce_only-s0", f"{BEST}-s0"}
    assert summary["teacher"] == "teacher" and summary["baseline"] == "ce_only-s0"
    text = (report / "report.md").read_text()
    assert "wer" in text.lower() and "cider" in text.lower()
    assert "SPIDEr" not in text.split("CIDEr")[0]
    for run in ("teacher", "students/labels-0.5/ce_only-s0", f"students/labels-0.5/{BEST}-s0"):
        metrics = json.loads((out / run / "eval" / "metrics.json").read_text())
        assert metrics["accuracy"]["asr"]["metric"] == "wer"
        assert metrics["efficiency"]["baseline"]["ttft_s"] > 0
    # the foundation models were saved in their formats and loaded through the real fields
    for part in ("speech_encoder", "teacher_lm", "student_lm"):
        assert (out / "foundation" / part / "model.safetensors").is_file()
        assert (out / "foundation" / part / "config.json").is_file()
    config = (out / "students" / "labels-0.5" / f"{BEST}-s0" / "config.yaml").read_text()
    assert "whisper_path" in config and "foundation/speech_encoder" in config
    assert "pseudo_labels.json" in config  # the distilled student trains on pseudo-labels
    # the teacher trained data-parallel: 2 processes of half the batch each
    import yaml

    from distill.demo.config import DemoConfig

    teacher = yaml.safe_load((out / "teacher" / "config.yaml").read_text())
    assert teacher["data"]["batch_size"] == DemoConfig.quick().batch_size // 2
    assert "data-parallel: 2 processes" in proc.stdout
    # the README's demo table has the form of the table this metrics.json gives
    from distill.demo import figures_table

    demo = json.loads((out / "metrics.json").read_text())
    assert demo["timings_s"]["total_s"] > 0 and demo["teacher"]["wer_percent"] >= 0
    ours = figures_table(demo)
    readme = _readme_table()
    assert len(readme) == len(ours)
    for mine, theirs in zip(ours, readme):
        cells_a, cells_b = mine.strip("|").split("|"), theirs.strip("|").split("|")
        assert len(cells_a) == len(cells_b)
        assert cells_a[0].strip() == cells_b[0].strip()  # same row labels
        if mine.startswith("| model") or set(mine) <= set("|-"):
            assert [c.strip().split(",")[0] for c in cells_a] == [
                c.strip().split(",")[0] for c in cells_b
            ]
        else:
            assert [_shape(c) for c in cells_a[1:]] == [_shape(c) for c in cells_b[1:]]
    assert "report:" in proc.stdout
    # a second run reuses every finished stage
    again = _cli("demo", "--quick", "--out", str(out), cwd=tmp_path, timeout=300)
    assert again.returncode == 0 and again.stdout.count("reusing") >= 7, again.stdout
    assert "answering again" not in again.stdout  # the pseudo-labels are this teacher's


@pytest.mark.slow
def test_study_quick(tmp_path):
    import time

    t = time.perf_counter()
    proc = _cli("study", "--quick", "--out", str(tmp_path / "study"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    elapsed = time.perf_counter() - t
    table = tmp_path / "study" / "study" / "test-labels-0.5"
    for name in ("study.md", "study.html", "study.png", "study.json"):
        assert (table / name).is_file(), name
    numbers = json.loads((table / "study.json").read_text())
    from distill.demo.arms import STUDY_ARMS as ARMS

    assert list(numbers["arms"]) == list(ARMS) and numbers["baseline"] == "ce_only"
    wer = next(m for m in numbers["metrics"] if m["key"] == "asr/wer")
    for arm in ARMS[1:]:
        assert len(wer["arms"][arm]["per_seed"]) == 2
        assert wer["arms"][arm]["pooled"]["verdict"] in ("beats", "ties", "loses")
    equal = json.loads((tmp_path / "study" / "study" / "test-labels-1" / "study.json").read_text())
    from distill.demo.study import EQUAL_ARMS

    assert list(equal["arms"]) == list(EQUAL_ARMS)
    print(f"distill study --quick: {elapsed:.0f} s")


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


@pytest.mark.slow
def test_students_side_by_side_equal_one_at_a_time(tmp_path, monkeypatch):
    """`jobs` only changes the wall time: 2 at once give the runs of 1 at a time, bit for bit.

    The world too: its stages (foundation parts, feature store, evaluation beside
    pseudo-labels) overlap with 2 jobs and run in turn with 1, and the teacher trains
    data-parallel over 2 processes in both. With 2 jobs the students run on the workers that
    built the world, as in `distill demo`.
    """
    from safetensors.torch import load_file

    from distill.demo._parallel import executor
    from distill.demo.config import DemoConfig
    from distill.demo.world import build_world, run_students

    jobs = [("ce_only", 0), ("seqkd", 1)]
    weights, worlds = [], []
    for n, out in ((1, tmp_path / "serial"), (2, tmp_path / "parallel")):
        cfg = DemoConfig.quick(out_dir=str(out), progress=False, jobs=n, student_seeds=(0, 1))
        with executor(n) as pool:
            world = build_world(cfg, {}, pool)
            paths = run_students(world, jobs, {}, pool=pool)
        lms = [Path(world.found[k]) / "model.safetensors" for k in ("teacher_lm", "student_lm")]
        pseudo = json.loads(Path(world.pseudo).read_text())["annotation"]
        teacher_eval = json.loads((world.teacher_dir / "eval" / "metrics.json").read_text())
        worlds.append(
            {
                "teacher": load_file(world.teacher_dir / "model" / "model.safetensors"),
                "lms": [load_file(f) for f in lms],
                "pseudo": [(it["id"], it["text"]) for it in pseudo],
                "teacher_wer": teacher_eval["accuracy"]["asr"]["wer_percent"],
            }
        )
        assert [p.name for p in paths] == ["ce_only-s0", "seqkd-s1"]
        weights.append([load_file(p / "model" / "model.safetensors") for p in paths])
        metrics = [json.loads((p / "eval" / "metrics.json").read_text()) for p in paths]
        assert all(m["accuracy"]["asr"]["metric"] == "wer" for m in metrics)
    for serial, parallel in zip(*weights):
        assert serial.keys() == parallel.keys()
        for key in serial:
            assert serial[key].equal(parallel[key]), key
    serial_world, parallel_world = worlds
    assert serial_world["pseudo"] == parallel_world["pseudo"]
    # answered in two halves (cut at a batch boundary), the pseudo-labels are the answers of
    # one pass over the clips with the same batches
    from distill.data.annotations import read_annotations
    from distill.demo import stages

    monkeypatch.setattr(stages, "PSEUDO_BATCH", 8)  # several batches in the quick world
    unlabelled = read_annotations(world.paths["unlabelled"])
    assert len(unlabelled) > 2 * 8
    out = stages.pseudo_label(world.cfg, world.teacher_dir, world.paths["unlabelled"],
                              tmp_path / "halves" / "pseudo.json", world.paths["features"])  # fmt: skip
    halves = [(it["id"], it["text"]) for it in json.loads(Path(out).read_text())["annotation"]]
    one_pass, _ = stages.teacher_answers(world.cfg, str(world.teacher_dir), unlabelled,
                                         world.paths["features"], False)  # fmt: skip
    expected = [(it.id, one_pass[it.id].strip()) for it in unlabelled if one_pass[it.id].strip()]
    assert halves == expected
    assert serial_world["teacher_wer"] == parallel_world["teacher_wer"]
    for a, b in [(serial_world["teacher"], parallel_world["teacher"]),
                 *zip(serial_world["lms"], parallel_world["lms"])]:  # fmt: skip
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
