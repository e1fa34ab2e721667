"""A teacher whose losses read no logits skips its LLM and gives the same features."""

from __future__ import annotations

import pytest
import torch

from distill.contracts import ContractError, TeacherSignals
from distill.engine.utils import needs_teacher_logits
from losses import CE, DDAT, Compose, CTCAux, FeatureMSE, QFormerContrastive, TokenKL
from losses._reduce import LossInputError
from tests.modeling.conftest import make_batch


def test_needs_teacher_logits_follows_the_terms():
    mse = FeatureMSE(fields=["qformer"])
    assert not needs_teacher_logits(CE())
    assert not needs_teacher_logits(mse)
    assert not needs_teacher_logits(QFormerContrastive(student_dim=8, teacher_dim=8))
    assert not needs_teacher_logits(CTCAux(width=8, vocab_size=5))
    assert not needs_teacher_logits(Compose({"ce": CE(), "mse": mse}))
    assert needs_teacher_logits(TokenKL())
    assert needs_teacher_logits(Compose({"ce": CE(), "kl": TokenKL()}))
    assert needs_teacher_logits(Compose({"inner": Compose({"d": DDAT(kd=TokenKL())})}))
    assert needs_teacher_logits(torch.nn.Module())  # a loss that does not say: assume yes


def test_features_only_forward_skips_the_llm_and_keeps_the_features(teacher):
    from teachers.audio_llm import AudioLLMTeacher

    teacher.eval()
    batch = make_batch()
    full = AudioLLMTeacher(model=teacher, hidden=("qformer", "speech"))
    calls = []
    from distill.modeling.llm import base_causal_lm

    decoder = base_causal_lm(full.model.llama_model).get_decoder()
    hook = decoder.register_forward_hook(lambda *a: calls.append(1))
    dense = full.signals(batch)
    assert len(calls) == 1
    full.logits = False
    feats = full.signals(batch)
    hook.remove()
    assert len(calls) == 1  # the LLM did not run
    assert dense.has_logits and not feats.has_logits and not feats.is_sparse
    assert feats.logits is None and feats.topk_values is None
    for name in ("qformer", "qformer_mask", "speech", "mask", "token_ids"):
        assert torch.equal(getattr(feats, name), getattr(dense, name)), name
    # a token loss given features only says what to change
    student = teacher(batch)
    with pytest.raises(LossInputError, match="logits=True"):
        TokenKL()(student, feats)


def test_signals_without_logits_need_a_hidden_state():
    mask = torch.ones(1, 2, dtype=torch.bool)
    ids = torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(ContractError, match="at least one hidden state"):
        TeacherSignals(mask=mask, token_ids=ids)
    TeacherSignals(mask=mask, token_ids=ids, qformer=torch.zeros(1, 3, 4))
