"""Plain answer-span cross-entropy: the CE-only baseline.

Glossary: b batch, n answer tokens, v vocab.

    loss = sum_i CE(logits_i, token_ids_i) over valid tokens / denominator
(the shared `num_tokens` convention of `losses._reduce`). The teacher is ignored, so the
baseline runs through exactly the same loop and metrics as the distilled students.
"""

from __future__ import annotations

from torch import nn

from distill.contracts import LossOutput, ModelOutputs, TeacherSignals
from losses._reduce import check_finite, check_result, masked_mean, token_cross_entropy


class CE(nn.Module):
    """Answer-span CE of the student; `teacher` may be None.

    Args:
        chunk_size: positions per chunk of the log-softmax (None: unchunked).
    """

    teacher_logits = False  # reads no teacher logits: a teacher may skip its LLM (see
    # distill.engine.utils.needs_teacher_logits)

    def __init__(self, chunk_size: int | None = 8) -> None:
        super().__init__()
        self.chunk_size = chunk_size

    def forward(self, student: ModelOutputs, teacher: TeacherSignals | None = None) -> LossOutput:
        check_finite("student.logits", student.logits)
        per_token = token_cross_entropy(
            student.logits, student.token_ids, student.mask, self.chunk_size
        )
        loss = masked_mean(per_token, student.mask, student.num_tokens)
        check_result("CE loss", loss)
        return LossOutput(loss=loss, metrics={"ce": loss.detach(), "loss": loss.detach()})
