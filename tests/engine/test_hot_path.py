"""The engine's hot path never waits on the device; what it skips, it checks when it logs.

- a non-logging optimizer step makes 0 host syncs (CE-only and DDAT over a live teacher);
- a logging step fetches its record in one go and gets the same values;
- a NaN that the skipped input checks would have named is caught on the next fetched step,
  and `train.debug_checks: true` names the input again;
- `masked_mean` divides by a reduced-tensor token count exactly as by the number.
"""

import math

import pytest
import torch

from distill.checks import checks_enabled, debug_checks
from distill.engine.syncs import count_host_syncs
from distill.engine.trainer import NonFiniteTrainingError, Trainer

DDAT = "{_component_: losses.DDAT, kd: {_component_: losses.TokenKL, temperature: 2.0}}"


def _trainer(make_recipe, name, **extra):
    return Trainer(make_recipe(name, **{"train.trackers": "[]", **extra}))


@pytest.mark.parametrize("recipe, loss", [("baseline", None), ("ddat", DDAT)])
def test_a_non_logging_step_makes_no_host_sync(make_recipe, recipe, loss):
    extra = {"loss": loss} if loss else {}
    trainer = _trainer(make_recipe, recipe, **extra)
    # batches come from the loader beforehand: its host-side decoding is not the step's
    batches = [trainer.stream.next(i) for i in range(3)]
    trainer.train_step([batches[0]], fetch=False)  # warm-up
    with count_host_syncs() as quiet:
        assert trainer.train_step([batches[1]], fetch=False) is None
    assert quiet.total == 0, dict(quiet.by_kind)
    with count_host_syncs() as logged:
        record = trainer.train_step([batches[2]], fetch=True)
    # the record in one tolist(), the clipped gradient norm in one float()
    assert logged.total == 2, dict(logged.by_kind)
    assert record["step"] == 3 and math.isfinite(record["loss"]) and record["loss"] > 0
    assert all(isinstance(v, float) for k, v in record.items() if k != "step")


def test_fetched_record_equals_the_losses_own_values(make_recipe):
    # the fetched loss is the loss the step backpropagated: recompute it by hand from the
    # same batch and weights before the step
    trainer = _trainer(make_recipe, "baseline", **{"optim.clip_grad_norm": 0})
    batch = trainer.stream.next(0)
    with torch.no_grad():
        want = float(trainer.step_module(batch, None, None)[0])
    record = trainer.train_step([batch])
    assert record["loss"] == pytest.approx(want, rel=1e-6)
    assert "grad_norm" not in record


def test_a_nan_is_caught_when_logged_and_named_under_debug_checks(make_recipe):
    trainer = _trainer(make_recipe, "baseline")
    student = trainer.accelerator.unwrap_model(trainer.step_module).student
    with torch.no_grad():
        next(p for p in student.parameters() if p.requires_grad).fill_(float("nan"))
    trainer.train_step([trainer.stream.next(0)], fetch=False)  # skipped checks: no error
    with pytest.raises(NonFiniteTrainingError, match=r"step 2: loss.*debug_checks: true"):
        trainer.train_step([trainer.stream.next(1)], fetch=True)

    debug = _trainer(make_recipe, "baseline", out="debug", **{"train.debug_checks": "true"})
    student = debug.accelerator.unwrap_model(debug.step_module).student
    with torch.no_grad():
        next(p for p in student.parameters() if p.requires_grad).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="student.logits contains NaN"):
        debug.train_step([debug.stream.next(0)], fetch=False)


def test_debug_checks_switch_is_scoped():
    from losses._reduce import NonFiniteError, check_finite

    bad = torch.tensor([1.0, float("nan")])
    assert checks_enabled()
    with pytest.raises(NonFiniteError, match="x contains NaN"):
        check_finite("x", bad)
    with debug_checks(False):
        assert not checks_enabled()
        check_finite("x", bad)  # skipped
        with debug_checks(True):
            with pytest.raises(NonFiniteError):
                check_finite("x", bad)
    assert checks_enabled()


def test_masked_mean_takes_a_reduced_token_count():
    from losses._reduce import masked_mean

    values = torch.tensor([[1.0, 2.0, 4.0], [8.0, 16.0, 32.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert float(masked_mean(values, mask)) == 11.0 / 3
    assert float(masked_mean(values, mask, 5.0)) == 11.0 / 5
    assert torch.equal(
        masked_mean(values, mask, torch.tensor(5.0, dtype=torch.float64)),
        masked_mean(values, mask, 5.0),
    )
    assert float(masked_mean(values, mask, torch.tensor(0.0))) == 11.0  # clamped to 1
    assert float(masked_mean(values, torch.zeros_like(mask))) == 0.0
