"""Kill a run with SIGTERM, resume it, and get the uninterrupted loss curve back."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.engine.conftest import CONFIGS, ROOT, tiny_overrides


def _curve(out):
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _run(args, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, **kw)


@pytest.mark.slow
def test_sigterm_then_resume_reproduces_the_curve(corpus, tmp_path):
    steps = 10
    common = {"optim.max_steps": steps, "train.save_every": 100, "train.log_every": 1}
    script = [str(ROOT / "recipes" / "ddat.py"), "--config", str(CONFIGS / "ddat_tiny.yaml")]
    ref_out, cut_out = tmp_path / "ref", tmp_path / "cut"
    ref = _run(script + tiny_overrides(corpus, ref_out, **common))
    assert ref.wait(timeout=300) == 0

    proc = _run(script + tiny_overrides(corpus, cut_out, **common))
    log = cut_out / "train_log.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:
        if log.is_file() and len(log.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, "SIGTERM must save and exit cleanly"
    saved = sorted((cut_out / "checkpoints").glob("step_*"))
    assert saved and not any(p.name.endswith(".tmp") for p in saved)
    stopped_at = int(saved[-1].name.split("_")[1])
    assert stopped_at < steps, "the run should have been interrupted before the end"

    resumed = _run(script + tiny_overrides(corpus, cut_out, **common))
    assert resumed.wait(timeout=300) == 0
    a, b = _curve(ref_out), _curve(cut_out)
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-6, f"step {step}: {a[step]} vs {b[step]}"
    final_a = load_file(ref_out / "checkpoints" / f"step_{steps:06d}" / "model.safetensors")
    final_b = load_file(cut_out / "checkpoints" / f"step_{steps:06d}" / "model.safetensors")
    assert final_a.keys() == final_b.keys()
    for k in final_a:
        a, b = final_a[k], final_b[k]
        if a.is_floating_point():
            assert (a - b).abs().max() <= 1e-6, k
        else:
            assert torch.equal(a, b), k
