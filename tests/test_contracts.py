"""The contracts validate at construction and name the problem."""

import pytest
import torch

from distill.contracts import (
    AudioBatch,
    ContractError,
    LossOutput,
    ModelOutputs,
    TeacherSignals,
    TokenizerInfo,
)


def _batch(**kw):
    args = dict(
        waveforms=torch.zeros(2, 16000),
        lengths=torch.tensor([16000, 8000]),
        tasks=["asr", "asr"],
        prompts=["p", "p"],
        answers=["a b", "c"],
        ids=["x", "y"],
    )
    args.update(kw)
    return AudioBatch(**args)


def test_audio_batch_valid_and_select():
    b = _batch()
    assert len(b) == 2
    sub = b.select([1])
    assert sub.ids == ["y"] and sub.waveforms.shape == (1, 8000)


@pytest.mark.parametrize(
    "kw, needle",
    [
        (dict(sample_rate=44100), "16000"),
        (dict(waveforms=torch.zeros(2, 0)), "empty waveform"),
        (dict(lengths=torch.tensor([16000, 0])), "length 0"),
        (dict(ids=["x"]), "AudioBatch.ids"),
        (dict(waveforms=torch.zeros(2, 3, 4)), "2 dims"),
        (dict(lengths=torch.tensor([20000, 1])), "exceeds"),
    ],
)
def test_audio_batch_errors_name_the_problem(kw, needle):
    with pytest.raises(ContractError, match=needle):
        _batch(**kw)


def _outputs(**kw):
    g = torch.Generator().manual_seed(0)
    args = dict(
        logits=torch.randn(2, 3, 5, generator=g),
        mask=torch.tensor([[True, True, False], [True, False, False]]),
        token_ids=torch.zeros(2, 3, dtype=torch.long),
        offsets=torch.zeros(2, 3, 2, dtype=torch.long),
    )
    args.update(kw)
    return ModelOutputs(**args)


def test_model_outputs_shapes_checked():
    out = _outputs()
    assert out.vocab_size == 5 and out.batch_size == 2
    with pytest.raises(ContractError, match="token_ids shape"):
        _outputs(token_ids=torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ContractError, match="mask must be bool"):
        _outputs(mask=torch.ones(2, 3))
    with pytest.raises(ContractError, match="offsets shape"):
        _outputs(offsets=torch.zeros(2, 3, 3, dtype=torch.long))
    with pytest.raises(ContractError, match="qformer batch"):
        _outputs(qformer=torch.zeros(3, 4, 8))


def test_teacher_signals_dense_or_sparse():
    out = _outputs()
    dense = TeacherSignals.from_outputs(out)
    assert not dense.is_sparse and dense.vocab_size == 5
    sparse = TeacherSignals.from_outputs(out, topk=2)
    assert sparse.is_sparse and sparse.topk_values.shape == (2, 3, 2)
    torch.testing.assert_close(sparse.topk_values[..., 0], out.logits.max(-1).values)
    torch.testing.assert_close(sparse.logsumexp, torch.logsumexp(out.logits, -1))
    with pytest.raises(ContractError, match="at least one hidden state"):
        TeacherSignals(mask=out.mask, token_ids=out.token_ids)  # no logits, no features
    with pytest.raises(ContractError, match="not both"):
        TeacherSignals(mask=out.mask, token_ids=out.token_ids, logits=out.logits,
                       topk_values=sparse.topk_values, topk_indices=sparse.topk_indices,
                       vocab_size=5)  # fmt: skip
    with pytest.raises(ContractError, match="vocab_size"):
        TeacherSignals(
            mask=out.mask,
            token_ids=out.token_ids,
            topk_values=torch.zeros(2, 3, 2),
            topk_indices=torch.zeros(2, 3, 2, dtype=torch.long),
        )


def test_tokenizer_info_fingerprint_and_loss_output():
    a = TokenizerInfo("a", ("x", "y"))
    assert a.same_as(TokenizerInfo("b", ("x", "y")))
    assert not a.same_as(TokenizerInfo("a", ("x", "z")))
    assert a.vocab_size == 2
    with pytest.raises(ContractError, match="scalar"):
        LossOutput(loss=torch.zeros(2))
    assert LossOutput(loss=torch.tensor(1.0), metrics={"a": torch.tensor(2.0)}).metrics == {
        "a": 2.0
    }
