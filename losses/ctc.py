"""CTC auxiliary loss on the speech-encoder features: an alignment aid, not distillation.

Glossary: b batch, t encoder frames, d encoder width, n answer tokens, c CTC classes.

A linear head maps each speech-encoder frame (after `ln_speech`) to the student's
vocabulary plus a blank, and CTC (Graves et al. 2006) scores the answer tokens of the
ASR items. Learning the audio-to-text alignment through the LLM alone is the slow part
of training a small AudioLLM from scratch; REFERENCE.md's measurements on a tiny model
took multi-word ASR from WER 91 % to 3.7 % in the same 1,500 steps with this head at
weight 0.5. It uses no teacher signal, so a CE-only baseline can (and, for a fair
comparison, should) get it too.

    loss = sum over ASR items of CTC(head(speech), answer tokens without end_sym) / denominator

The denominator is the shared convention of `losses._reduce.masked_mean`: the global
answer-token count `student.num_tokens` when the engine sets it, else the local count.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from distill.contracts import LossOutput, ModelOutputs, TeacherSignals
from losses._reduce import (
    LossInputError,
    check_finite,
    check_result,
    checks_enabled,
    touch_parameters,
    upcast,
)


class CTCAux(nn.Module):
    """CTC head on `student.speech` (or the Q-Former windows) for items whose task is in `tasks`.

    Args:
        width: width d of the chosen field (Whisper d_model, or the Q-Former hidden size).
        vocab_size: the student's vocabulary size v; the blank is class v.
        tasks: tasks whose answers are transcripts (CTC needs monotonic alignment).
        field: "speech" (encoder frames, when the encoder trains) or "qformer" (the audio
            tokens the LLM reads, when the encoders are frozen: it teaches the bridge to
            carry each window's tokens in time order).
    """

    teacher_logits = False  # reads no teacher logits: a teacher may skip its LLM (see
    # distill.engine.utils.needs_teacher_logits)

    def __init__(
        self, width: int, vocab_size: int, tasks: Sequence[str] = ("asr",), field: str = "speech"
    ) -> None:
        super().__init__()
        if width < 1 or vocab_size < 1:
            raise ValueError(
                f"CTCAux needs width >= 1 and vocab_size >= 1, got {width}, {vocab_size}"
            )
        if field not in ("speech", "qformer"):
            raise ValueError(f"CTCAux.field must be 'speech' or 'qformer', got {field!r}")
        self.field = field
        self.hidden_states = (field,)
        self.head = nn.Linear(width, vocab_size + 1)
        self.blank = vocab_size
        self.tasks = tuple(tasks)

    def forward(self, student: ModelOutputs, teacher: TeacherSignals | None = None) -> LossOutput:
        feats_all = getattr(student, self.field)
        if feats_all is None:
            raise LossInputError(
                f"CTCAux needs `{self.field}` hidden states from the student forward"
            )
        if feats_all.shape[-1] != self.head.in_features:
            raise LossInputError(
                f"CTCAux.width {self.head.in_features} != student {self.field} width "
                f"{feats_all.shape[-1]}"
            )
        check_finite(f"student.{self.field}", feats_all)
        tasks = student.tasks or [self.tasks[0]] * student.batch_size
        rows = [i for i, task in enumerate(tasks) if task in self.tasks]
        # no ASR item: a zero that still touches the head (weight and bias), so that under
        # DDP every process uses every parameter
        zero = touch_parameters(self, feats_all)
        if not rows or student.sampled:  # the student's own samples are no transcripts
            return LossOutput(loss=zero, metrics={"ctc": zero.detach(), "loss": zero.detach()})
        # end_sym tokens are zero-width at the end of the answer; CTC scores the words only
        keep = student.mask.clone()
        if student.offsets is not None:
            keep &= student.offsets[..., 0] != student.offsets[..., 1]
        idx = torch.tensor(rows, device=feats_all.device)
        feats = feats_all.index_select(0, idx).to(self.head.weight.dtype)
        log_probs = F.log_softmax(upcast(self.head(feats)), dim=-1)  # [b', t, c], fp32 or fp64
        keep = keep.index_select(0, idx)
        targets = student.token_ids.index_select(0, idx)[keep]
        target_lengths = keep.sum(-1)
        t = log_probs.shape[1]
        if checks_enabled() and int(target_lengths.max()) > t:
            raise LossInputError(
                f"CTCAux: an answer has {int(target_lengths.max())} tokens for {t} frames"
            )
        input_lengths = torch.full((len(rows),), t, dtype=torch.long, device=log_probs.device)
        if self.field == "qformer" and student.qformer_mask is not None:
            # only windows over real audio: the rest is batch padding
            input_lengths = student.qformer_mask.index_select(0, idx).sum(-1).clamp(min=1)
            # at most t frames (an answer longer than its audio is infeasible: zero_infinity)
            input_lengths = torch.maximum(input_lengths, target_lengths).clamp(max=t)
        total = F.ctc_loss(
            rearrange(log_probs, "b t c -> t b c"),
            targets,
            input_lengths,
            target_lengths,
            blank=self.blank,
            reduction="sum",
            zero_infinity=True,
        )
        local = student.mask.sum().clamp(min=1)
        denom = student.num_tokens if student.num_tokens is not None else local
        loss = total / denom
        check_result("CTCAux loss", loss)
        return LossOutput(loss=loss, metrics={"ctc": loss.detach(), "loss": loss.detach()})
