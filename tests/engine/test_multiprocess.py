"""Two CPU processes (gloo) give the same first step as one process on the same global batch."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from tests.engine.conftest import CONFIGS, ROOT, tiny_overrides


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate CLI not on PATH")
def test_two_processes_match_one(corpus, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    script = [str(ROOT / "recipes" / "ddat.py"), "--config", str(CONFIGS / "ddat_tiny.yaml")]
    one, two = tmp_path / "one", tmp_path / "two"
    # Adam's first update is ~lr * sign(g): with eps=1e-8 float noise in near-zero gradients
    # flips it. A larger eps makes the update a smooth function of the gradient, so equal
    # updated weights really mean equal (averaged) gradients.
    common = {"optim.max_steps": 1, "train.save_every": 1, "optim.eps": 1e-3}
    subprocess.run(
        [sys.executable, *script, *tiny_overrides(corpus, one, **common, **{"data.batch_size": 4})],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=300,
    )
    launch = [
        shutil.which("accelerate"),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--main_process_port",
        "29533",
    ]
    subprocess.run(
        [*launch, *script, *tiny_overrides(corpus, two, **common, **{"data.batch_size": 2})],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=300,
    )
    first = [json.loads((d / "train_log.jsonl").read_text().splitlines()[0]) for d in (one, two)]
    assert abs(first[0]["loss"] - first[1]["loss"]) <= 1e-5, (first[0]["loss"], first[1]["loss"])
    # the global gradient norm (after DDP averaging) equals the one-process norm
    assert abs(first[0]["grad_norm"] - first[1]["grad_norm"]) <= 1e-5 * first[0]["grad_norm"]
    w1 = load_file(one / "checkpoints" / "step_000001" / "model.safetensors")
    w2 = load_file(two / "checkpoints" / "step_000001" / "model.safetensors")
    assert w1.keys() == w2.keys()
    worst = max(float((w1[k].float() - w2[k].float()).abs().max()) for k in w1)
    assert worst <= 1e-5, f"updated weights differ by {worst}"
