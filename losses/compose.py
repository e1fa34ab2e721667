"""Weighted sum of named losses, with optional per-step weight schedules.

    loss = sum_name weight_name * schedule_name(step) * term_name.loss

Every term's metrics are reported as "<name>/<metric>", its effective weight as
"<name>/weight", and the total as "loss". `step` is a registered buffer (saved with the
state dict, so a resumed run continues its schedules) and advances once per forward in
training mode. Build it from YAML by dotted path:

    loss:
      _component_: losses.Compose
      terms:
        kl: {_component_: losses.TokenKL, temperature: 2.0}
        feat: {_component_: losses.FeatureMSE, fields: [qformer]}
      weights: {kl: 1.0, feat: 0.5}
      schedules: {feat: {_component_: losses.LinearWarmup, steps: 1000}}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from distill.contracts import LossOutput, ModelOutputs, TeacherSignals


class LinearWarmup:
    """Weight multiplier rising linearly from `start` to 1 over `steps` steps, then 1."""

    def __init__(self, steps: int, start: float = 0.0, delay: int = 0) -> None:
        if steps < 0 or delay < 0:
            raise ValueError(f"LinearWarmup needs steps >= 0 and delay >= 0, got {steps}, {delay}")
        self.steps, self.start, self.delay = int(steps), float(start), int(delay)

    def __call__(self, step: int) -> float:
        if step < self.delay:
            return self.start if self.steps else 1.0
        if self.steps == 0:
            return 1.0
        frac = min((step - self.delay) / self.steps, 1.0)
        return self.start + (1.0 - self.start) * frac


class Compose(nn.Module):
    """Sum of named loss terms.

    Args:
        terms: {name: loss module}; each is registered (its parameters train and are saved).
        weights: {name: float}; missing names weigh 1.
        schedules: {name: callable(step) -> multiplier}, e.g. `LinearWarmup`.
    """

    def __init__(
        self,
        terms: Mapping[str, nn.Module],
        weights: Mapping[str, float] | None = None,
        schedules: Mapping[str, Callable[[int], float]] | None = None,
    ) -> None:
        super().__init__()
        if not terms:
            raise ValueError("Compose needs at least one term")
        for extra, what in ((weights or {}, "weights"), (schedules or {}, "schedules")):
            unknown = sorted(set(extra) - set(terms))
            if unknown:
                raise ValueError(
                    f"Compose.{what} names unknown terms {unknown}; terms are {sorted(terms)}"
                )
        bad = [k for k in terms if "/" in k or "." in k]
        if bad:
            raise ValueError(f"Compose term names must not contain '/' or '.': {bad}")
        self.terms = nn.ModuleDict(dict(terms))
        self.weights = {k: float((weights or {}).get(k, 1.0)) for k in terms}
        self.schedules = dict(schedules or {})
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._host_step: int | None = 0  # the buffer's value on the host (None: read it)

    @property
    def teacher_logits(self) -> bool:
        """Whether any term reads the teacher's logits (a term that does not say: yes)."""
        return any(getattr(term, "teacher_logits", True) for term in self.terms.values())

    def weight(self, name: str) -> float:
        """Effective weight of `name` at the current step."""
        schedule = self.schedules.get(name)
        if schedule is None:
            return self.weights[name]
        if self._host_step is None:  # after load_state_dict: read the buffer once
            self._host_step = int(self.step)
        return self.weights[name] * schedule(self._host_step)

    def on_step(self, step: int) -> None:
        """Called by the engine once per optimizer step, `step` the steps done so far.

        Schedules read this count, so with gradient accumulation every micro-batch of one
        optimizer step sees the same weights (the engine calls it on every module of the
        loss tree, so nested stateful losses advance too).
        """
        self.step.fill_(int(step))
        self._host_step = int(step)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._host_step = None

    def forward(self, student: ModelOutputs, teacher: TeacherSignals) -> LossOutput:
        total, metrics = None, {}
        for name, term in self.terms.items():
            w = self.weight(name)
            metrics[f"{name}/weight"] = w
            if w == 0.0:
                continue  # a term still warming up costs nothing
            out = term(student, teacher)
            for key, value in out.metrics.items():
                metrics[f"{name}/{key}"] = value
            total = w * out.loss if total is None else total + w * out.loss
        if total is None:
            anchor = student.logits if student.logits is not None else student.llm_hidden
            total = anchor.sum() * 0.0
        metrics["loss"] = total.detach()
        return LossOutput(loss=total, metrics=metrics)
