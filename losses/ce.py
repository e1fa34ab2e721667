"""Plain answer-span cross-entropy: the CE-only baseline.

Glossary: b batch, n answer tokens, v vocab.

    loss = sum_i CE(logits_i, token_ids_i) over valid tokens / denominator
(the shared `num_tokens` convention of `losses._reduce`). The teacher is ignored, so the
baseline runs through exactly the same loop and metrics as the distilled students.
"""

from __future__ import annotations

from torch import nn

from distill.contracts import LossOutput, ModelOutputs, TeacherSignals
from losses._fused_head import linear_terms
from losses._reduce import (
    ce_chunk,
    check_finite,
    check_result,
    denominator,
    masked_mean,
    token_cross_entropy,
    upcast,
)


class CE(nn.Module):
    """Answer-span CE of the student; `teacher` may be None.

    Args:
        chunk_size: positions per chunk of the log-softmax (None: unchunked).
        on_sampled: also train on answers the student sampled itself (on-policy KD,
            `ModelOutputs.sampled`); False (default) gives 0 there, with no gradient.
    """

    teacher_logits = False  # reads no teacher logits: a teacher may skip its LLM (see
    # distill.engine.utils.needs_teacher_logits)

    def __init__(self, chunk_size: int | None = 8, on_sampled: bool = False) -> None:
        super().__init__()
        self.chunk_size = chunk_size
        self.on_sampled = bool(on_sampled)

    def forward(self, student: ModelOutputs, teacher: TeacherSignals | None = None) -> LossOutput:
        if student.sampled and not self.on_sampled:  # its own samples: nothing to imitate
            anchor = student.logits if student.logits is not None else student.llm_hidden
            zero = anchor.sum() * 0.0
            return LossOutput(loss=zero, metrics={"ce": zero.detach(), "loss": zero.detach()})
        if student.is_fused:  # hidden states and head: the logits are never held
            dtype = upcast(student.llm_hidden[:, :0]).dtype  # weights at the loss's precision
            w = student.mask.to(dtype) / denominator(student.mask, student.num_tokens)
            loss, _ = linear_terms(
                ce_chunk,
                student.llm_hidden,
                student.head,
                (student.token_ids, student.mask),
                (w,),
                chunk_size=self.chunk_size,
            )
            check_result("CE loss", loss)
            return LossOutput(loss=loss, metrics={"ce": loss.detach(), "loss": loss.detach()})
        check_finite("student.logits", student.logits)
        per_token = token_cross_entropy(
            student.logits, student.token_ids, student.mask, self.chunk_size
        )
        loss = masked_mean(per_token, student.mask, student.num_tokens)
        check_result("CE loss", loss)
        return LossOutput(loss=loss, metrics={"ce": loss.detach(), "loss": loss.detach()})
