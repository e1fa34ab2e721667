"""`precision`: one setting, applied in one place; `salmonn` is fp32 front ends + a low-precision LLM."""

from __future__ import annotations

import pytest
import torch

from distill.modeling.audio_llm import AudioLLM
from distill.modeling.config import AudioLLMConfig
from distill.modeling.llm import base_causal_lm
from distill.modeling.precision import llm_dtype
from distill.modeling.tiny import build_tiny
from tests.modeling.conftest import make_batch


def _as(model: AudioLLM, precision: str) -> AudioLLM:
    cfg = AudioLLMConfig.from_dict({**model.config.to_dict(), "precision": precision})
    other = AudioLLM(cfg)
    other.load_state_dict(model.state_dict())
    return other.eval()


@pytest.fixture
def fp32(tokenizer_dirs):
    return build_tiny("teacher", tokenizer_dirs["unigram"], seed=0).eval()  # BEATs + Whisper


def test_salmonn_precision_puts_each_part_in_its_dtype(fp32):
    model = _as(fp32, "salmonn")
    low = llm_dtype("salmonn", "cpu")
    assert low == torch.bfloat16 and llm_dtype("salmonn", "cuda") == torch.float16
    for name, p in model.named_parameters():
        want = low if name.startswith("llama_model.") else torch.float32
        assert p.dtype == want, name
    assert model.dtype == torch.float32 and model.precision == "salmonn"


def test_salmonn_precision_matches_a_reference_mixed_precision_computation(fp32):
    """Reference: the fp32 model's audio tokens and prompt, cast to bf16, through a bf16 copy
    of the LLM; the salmonn-precision model must give the same logits."""
    model = _as(fp32, "salmonn")
    batch = make_batch()
    with torch.no_grad():
        got = model(batch).logits
        inp = fp32.prepare_inputs(batch, with_answer=True)  # front ends and bridge in fp32
        lm = base_causal_lm(model.llama_model)  # the same weights, already in bf16
        body = lm.get_decoder()(
            inputs_embeds=inp["inputs_embeds"].to(torch.bfloat16),
            attention_mask=inp["attention_mask"],
        ).last_hidden_state
        pos = (inp["answer_pos"] - 1).clamp(min=0)
        h = torch.gather(body, 1, pos[..., None].expand(-1, -1, body.shape[-1]))
        want = lm.get_output_embeddings()(h)
        full = fp32(batch).logits
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=0, atol=0)
    # and within bf16's reach of the all-fp32 model
    torch.testing.assert_close(got.float(), full, rtol=0.05, atol=0.05)


def test_features_are_extracted_in_fp32_under_bf16(tokenizer_dirs):
    student = build_tiny("student", tokenizer_dirs["bpe"], seed=0, audio_encoder="ced").eval()
    model = _as(student, "bf16")
    ced = model.beats
    seen = []
    spectrogram, normalise = ced.spectrogram, ced._normalise
    ced.spectrogram = lambda w: seen.append(("wave", w.dtype)) or spectrogram(w)
    ced._normalise = lambda x: (lambda y: seen.append(("bn", y.dtype)) or y)(normalise(x))
    with torch.no_grad():
        out = model(make_batch())
    assert seen == [("wave", torch.float32), ("bn", torch.float32)]  # dB and BatchNorm in fp32
    assert out.logits.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def test_bad_precision_is_named():
    from distill._instantiate import ConfigError

    with pytest.raises(ConfigError, match="precision"):
        AudioLLMConfig(precision="int8")
