"""Gradient accumulation: 2 micro-batches of 2 per step train exactly like 1 batch of 4.

After 3 optimizer steps the two runs agree on every logged loss, on the weights, on DDAT's
entropy EMA and on Compose's step count (stateful losses advance per optimizer step, in
`on_step`, not per micro-batch).
"""

import json

import pytest
from safetensors.torch import load_file

# Compose(DDAT over token KL, CE warming up over 4 steps); DDAT's first-step entropy is
# fixed so the first alpha does not depend on the micro-batch split
LOSS = (
    "{_component_: losses.Compose, terms: {ddat: {_component_: losses.DDAT, initial_entropy: 2.0,"
    " kd: {_component_: losses.TokenKL, temperature: 3.0, cross_tokenizer: shared_vocab}},"
    " ce: {_component_: losses.CE}}, schedules: {ce: {_component_: losses.LinearWarmup, steps: 4}}}"
)


@pytest.mark.slow
def test_two_micro_batches_equal_one_batch(make_recipe, tmp_path):
    # Adam's first update is ~lr * sign(g); a larger eps makes it a smooth function of the
    # gradient, so equal weights mean equal accumulated gradients (as in test_multiprocess)
    common = {"optim.max_steps": 3, "train.save_every": 3, "optim.eps": 1e-3, "loss": LOSS,
              "train.eval_every": 0}  # fmt: skip
    runs = {}
    for name, batch, accum in (("one", 4, 1), ("accum", 2, 2)):
        recipe = make_recipe("ddat", out=name, **common, **{"data.batch_size": batch,
                                                            "optim.grad_accum": accum})  # fmt: skip
        recipe.fit()
        runs[name] = tmp_path / name
    logs = {
        k: [json.loads(line) for line in (d / "train_log.jsonl").read_text().splitlines()]
        for k, d in runs.items()
    }
    steps = {k: [r for r in v if "loss" in r] for k, v in logs.items()}
    assert [r["step"] for r in steps["one"]] == [r["step"] for r in steps["accum"]] == [1, 2, 3]
    # float32 resolution, not an absolute 1e-6: a CE of 6.2 has an ulp of 4.8e-7, and the two
    # splits sum in different orders (under load the BLAS may also pick fewer threads); it
    # failed at 1.4e-6 (2.3e-7 relative). A wrong accumulation is off by orders more.
    for a, b in zip(steps["one"], steps["accum"]):
        for key in ("loss", "ddat/ce", "ddat/kd", "ddat/alpha", "ce/weight"):
            assert a[key] == pytest.approx(b[key], rel=2e-6, abs=1e-6), (a["step"], key)
    assert [r["ce/weight"] for r in steps["one"]] == [0.0, 0.25, 0.5]
    w = {
        k: load_file(d / "checkpoints" / "step_000003" / "model.safetensors")
        for k, d in runs.items()
    }
    assert w["one"].keys() == w["accum"].keys() and any(k.startswith("student.") for k in w["one"])
    worst = max(
        float((w["one"][k].double() - w["accum"][k].double()).abs().max()) for k in w["one"]
    )
    assert worst <= 1e-6, f"weights differ by {worst}"
    state = {k: load_file(d / "loss.safetensors") for k, d in runs.items()}  # the final state
    for s in state.values():
        assert int(s["step"]) == 3  # Compose: 3 optimizer steps, not 6 micro-batches
        assert bool(s["terms.ddat.started"])
    assert float(state["one"]["terms.ddat.entropy_ema"]) == pytest.approx(
        float(state["accum"]["terms.ddat.entropy_ema"]), abs=1e-6
    )  # the teacher's float32 forward differs in the last digits with the batch's padding
