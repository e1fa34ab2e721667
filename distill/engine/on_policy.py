"""On-policy distillation (GKD, Agarwal et al. 2024): the student samples, the teacher scores.

For a fraction `train.on_policy_lmbda` of micro-batches the engine replaces each answer
by one the student samples for the same audio and prompt, then runs the usual step on
that batch: the live teacher is teacher-forced on the student's text and the loss (for
GKD, `losses.GeneralizedJSD` with its `beta`) compares the two distributions at every
position of what the student actually says. This removes the train/inference mismatch
of teacher forcing on the labels.

- Across tokenizers nothing extra is needed: the sampled answer is text, each model
  tokenizes it with its own tokenizer (that is the retokenisation), and the losses pair
  positions by character offsets (`losses.align`), as they do for labels.
- Which micro-batches sample is decided by a generator seeded with (seed, optimizer step,
  micro-batch): every process draws the same, a resumed run draws as the original did,
  and `lmbda = 0` never draws from torch's generator, so it trains exactly off-policy.
- Sampling is batched (`AudioLLM.generate`, one call per micro-batch), runs under
  `torch.inference_mode` in eval mode (no dropout), on the same student module the
  optimizer updates (the prepared model's parameters; no copy).
- The outputs of a sampled batch say so (`ModelOutputs.sampled`): `losses.CE` gives 0
  there by default, so a CE + divergence loss learns from labels on off-policy
  micro-batches and from the teacher alone on the student's own samples.
- A cached teacher cannot score text it has never seen: on-policy training needs a live
  teacher, and the engine says so before the first step.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass

import torch

from distill.contracts import AudioBatch


@dataclass(frozen=True)
class OnPolicy:
    """What `train.on_policy_*` sets."""

    lmbda: float = 0.0  # fraction of micro-batches answered by the student (TRL's lmbda)
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.lmbda <= 1.0:
            raise ValueError(f"train.on_policy_lmbda must be in [0, 1], got {self.lmbda}")

    @property
    def enabled(self) -> bool:
        return self.lmbda > 0.0

    def draws(self, seed: int, step: int, micro: int) -> bool:
        """Whether micro-batch `micro` of optimizer step `step` is sampled (no torch RNG)."""
        if not self.enabled:
            return False
        return random.Random(f"on-policy:{seed}:{step}:{micro}").random() < self.lmbda


def require_live_teacher(teacher) -> None:
    """A clear error for on-policy training over a teacher that cannot score new text."""
    if teacher is None:
        raise ValueError("train.on_policy_lmbda > 0 needs a teacher to score the student's answers")
    if getattr(teacher, "live", True) is False:
        raise ValueError(
            f"train.on_policy_lmbda > 0 needs a live teacher; {type(teacher).__name__} replays "
            "signals cached for the labelled answers and cannot score the student's samples. "
            "Use teachers.AudioLLMTeacher (or SalmonnTeacher), or set train.on_policy_lmbda: 0"
        )


def sample_answers(student, batch: AudioBatch, settings: OnPolicy) -> AudioBatch:
    """The batch with every answer replaced by one the student samples.

    `student` is the unwrapped module the optimizer trains; it is put in eval mode for
    sampling and back in the mode it was in.
    """
    was_training = student.training
    student.eval()
    try:
        with torch.inference_mode():
            answers = student.generate(
                batch,
                "greedy",
                do_sample=True,
                temperature=settings.temperature,
                top_p=settings.top_p,
                max_new_tokens=settings.max_new_tokens,
                min_length=0,
            )
    finally:
        student.train(was_training)
    sampled = copy.copy(batch)
    sampled.answers = list(answers)
    sampled.sampled = True
    return sampled
