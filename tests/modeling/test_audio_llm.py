"""AudioLLM forward, freezing, LoRA placement, generation and clear errors."""

from __future__ import annotations

import logging

import pytest
import torch

from distill.contracts import AudioBatch, ContractError, ModelOutputs
from distill.modeling.audio_llm import AudioLLM
from distill.modeling.config import AudioLLMConfig
from distill.modeling.llm import base_causal_lm
from distill.modeling.tiny import build_tiny, tiny_config

from .conftest import ASR, make_batch


def test_forward_returns_answer_span_outputs(student, batch):
    out = student(batch, hidden=("llm_hidden", "qformer", "speech"))
    assert isinstance(out, ModelOutputs)
    tok = student.tokenizer
    expected = [
        tok("the dog barks", add_special_tokens=False)["input_ids"],
        tok("a cat", add_special_tokens=False)["input_ids"],
    ]
    end = tok.convert_tokens_to_ids("<|im_end|>")
    n = max(len(e) for e in expected) + 1
    assert out.logits.shape == (2, n, len(tok))
    for i, ids in enumerate(expected):
        k = len(ids) + 1
        assert out.mask[i].tolist() == [True] * k + [False] * (n - k)
        assert out.token_ids[i, :k].tolist() == ids + [end]
    # offsets: pieces of the answer text, end_sym at (len, len)
    answer = "the dog barks"
    offs = out.offsets[0, : len(expected[0]) + 1].tolist()
    assert "".join(answer[s:e] for s, e in offs) == answer
    assert offs[-1] == [len(answer), len(answer)]
    assert out.tokenizer.vocab_size == len(tok) and out.ids == ["item0", "item1"]
    assert out.llm_hidden.shape == (2, n, 64)
    assert out.qformer.shape == (2, 8, 64) and out.qformer_mask.sum(1).tolist() == [8, 4]
    assert out.speech.shape == (2, 150, 64)


def test_answer_logits_equal_the_full_lm_logits(teacher, batch):
    """The gathered answer-span logits equal HF's full-sequence logits at those positions."""
    teacher.eval()
    out = teacher(batch)
    inp = teacher.prepare_inputs(batch, with_answer=True)
    full = teacher.llama_model(
        inputs_embeds=inp["inputs_embeds"], attention_mask=inp["attention_mask"]
    ).logits
    for i in range(2):
        k = int(out.mask[i].sum())
        pos = inp["answer_pos"][i, :k] - 1
        torch.testing.assert_close(out.logits[i, :k], full[i, pos])
        assert full[i, pos].argmax(-1).shape == (k,)


@pytest.mark.parametrize("which", ["student", "teacher"])
def test_forward_without_the_padding_mask_is_bit_identical(which, request):
    """forward() hands the LLM no attention mask: with right padding under a causal mask
    every pad key follows every real query, so the answer logits equal, bit for bit, those of
    a pass given the padding mask (and the LLM skips a check that waits on the device)."""
    model = request.getfixturevalue(which).eval()
    batch = make_batch(answers=("the dog barks at the cat", "a cat"))
    out = model(batch, hidden=("llm_hidden",))
    inp = model.prepare_inputs(batch, with_answer=True)
    assert not bool(inp["attention_mask"].all())  # the batch is padded
    lm = base_causal_lm(model.llama_model)
    body = lm.get_decoder()(
        inputs_embeds=inp["inputs_embeds"], attention_mask=inp["attention_mask"], use_cache=False
    ).last_hidden_state
    pos = (inp["answer_pos"] - 1).clamp(min=0)
    h = torch.gather(body, 1, pos[..., None].expand(-1, -1, body.shape[-1]))
    assert torch.equal(out.llm_hidden, h)
    assert torch.equal(out.logits, lm.get_output_embeddings()(h))


@pytest.mark.parametrize("loss_name", ["ce", "token_kl", "ddat"])
def test_fused_head_gives_the_materialised_gradients(student, loss_name):
    """forward(head=True) hands the loss llm_hidden and lm_head instead of logits; CE,
    TokenKL and DDAT over TokenKL then give the materialised loss and the same gradient
    on every trainable parameter (LoRA, Q-Former, projection, and the lm_head, unfrozen
    here), to 1e-5 in fp32."""
    from distill.contracts import TeacherSignals
    from losses import CE, DDAT, TokenKL

    student.eval()  # no dropout: the two passes must see the same network
    lm = base_causal_lm(student.llama_model)
    lm.get_output_embeddings().weight.requires_grad_(True)
    batch = make_batch(answers=("the dog barks at the cat", "a cat"))
    with torch.no_grad():
        ref = student(batch)
    g = torch.Generator().manual_seed(3)
    teacher = TeacherSignals(
        mask=ref.mask,
        token_ids=ref.token_ids,
        offsets=ref.offsets,
        tokenizer=ref.tokenizer,
        logits=torch.randn(ref.logits.shape, generator=g) * 2,
    )
    loss = {
        "ce": CE(chunk_size=2),
        "token_kl": TokenKL(temperature=2.0, chunk_size=2),
        "ddat": DDAT(TokenKL(ce_weight=0.0, chunk_size=2), mode="per_token"),
    }[loss_name]
    params = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
    assert any("lora" in n for n, _ in params)
    results = []
    for head in (False, True):
        student.zero_grad(set_to_none=True)
        out = student(batch, head=head)
        assert (out.logits is None) == head and (out.head is not None) == head
        value = loss(out, teacher).loss
        value.backward()
        results.append((value.detach(), {n: p.grad.clone() for n, p in params}))
    (want, want_g), (got, got_g) = results
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for name, grad in want_g.items():
        torch.testing.assert_close(got_g[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_item_alone_equals_item_in_batch(student):
    student.eval()
    both = make_batch()
    out = student(both)
    alone = student(both.select([1]))
    k = int(out.mask[1].sum())
    torch.testing.assert_close(out.logits[1, :k], alone.logits[0, :k], atol=1e-5, rtol=1e-5)


def test_backward_reaches_only_trainable_params(student, batch):
    out = student(batch)
    logp = out.logits.float().log_softmax(-1)
    nll = -logp.gather(-1, out.token_ids[..., None]).squeeze(-1)
    (nll * out.mask).sum().backward()
    for name, p in student.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
        else:
            assert p.grad is None, name
    assert (
        student.speech_Qformer.bert.encoder.layer[0].crossattention.self.key.weight.grad.abs().sum()
        > 0
    )


def test_frozen_parts_stay_frozen_and_in_eval(student):
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert not any(n.startswith("speech_encoder.") for n in trainable)
    base = [n for n in trainable if n.startswith("llama_model.") and "lora_" not in n]
    assert base == []
    prefixes = (
        "speech_query_tokens",
        "ln_speech.",
        "speech_Qformer.",
        "speech_llama_proj.",
        "llama_model.",
    )
    assert all(n.startswith(prefixes) for n in trainable)
    student.train()
    assert not student.speech_encoder.training and student.speech_Qformer.training


@pytest.mark.parametrize(
    ("targets", "expected"),
    [
        (("q_proj", "v_proj"), {"q_proj", "v_proj"}),
        (("q_proj", "v_proj", "gate_proj"), {"q_proj", "v_proj", "gate_proj"}),
    ],
)
def test_lora_lands_exactly_on_targets(tokenizer_dirs, targets, expected):
    model = build_tiny("student", tokenizer_dirs["bpe"], lora_targets=targets)
    lora = [n for n, p in model.named_parameters() if "lora_" in n]
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in lora} == expected
    assert len(lora) == 2 * 2 * len(expected)  # 2 layers x (A, B) x targets
    key = "llama_model.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"
    assert model.state_dict()[key].shape == (8, 64)


def test_bad_lora_target_is_named(tokenizer_dirs):
    with pytest.raises(ValueError, match="qkv_proj"):
        build_tiny("student", tokenizer_dirs["bpe"], lora_targets=("qkv_proj",))


def _greedy_reference(model, batch, steps: int) -> list[str]:
    """Greedy decoding by hand: prefill, then cached steps; min length 1 (an end id at the
    first step gives way to the best other token); cut at the first stop id."""
    from distill.eval.efficiency import decode_step, prefill

    stop = set(model.stop_ids)
    with torch.no_grad():
        out, mask = prefill(model, batch)
        rows = []
        for i in range(steps):
            logits = out.logits[:, -1].clone()
            if i == 0:
                logits[:, sorted(stop)] = -float("inf")
            tok = logits.argmax(-1, keepdim=True)
            rows.append(tok)
            out, mask = decode_step(model, tok, out.past_key_values, mask)
    texts = []
    for ids in torch.cat(rows, dim=1).tolist():
        cut = next((i for i, t in enumerate(ids) if t in stop), len(ids))
        text = model.tokenizer.decode(ids[:cut], skip_special_tokens=True)
        texts.append(text.split(model.config.end_sym)[0].strip())
    return texts


def test_generate_greedy_matches_a_hand_decoded_reference(teacher, batch):
    teacher.train()
    greedy = teacher.generate(batch, max_new_tokens=6)
    assert teacher.training  # generate restores the mode it found
    teacher.eval()
    assert greedy == [_greedy_reference(teacher, batch.select([i]), 6)[0] for i in range(2)]
    # one beam is greedy; wider beams return one stripped text per item, without end symbols
    assert teacher.generate(batch, num_beams=1, max_new_tokens=6) == greedy
    beam = teacher.generate(batch, num_beams=3, max_new_tokens=6)
    assert len(beam) == 2 and all(t == t.strip() and "</s>" not in t for t in beam)


def test_prepare_inputs_left_pads_prompts(student):
    student.eval()  # no dropout: the same item gives the same embeddings in any batch
    b = make_batch()
    b.prompts[1] = "Please describe the audio."
    inp = student.prepare_inputs(b)
    att, emb = inp["attention_mask"], inp["inputs_embeds"]
    width = att.shape[1]
    for i in range(2):
        alone = student.prepare_inputs(b.select([i]))
        n = alone["attention_mask"].shape[1]  # this item's own length, unpadded
        assert alone["attention_mask"].tolist() == [[1] * n]
        assert att[i].tolist() == [0] * (width - n) + [1] * n  # left padding only
        torch.testing.assert_close(emb[i, width - n :], alone["inputs_embeds"][0])
    assert att.sum(1).tolist()[0] != att.sum(1).tolist()[1]  # the prompts differ in length


def test_truncates_long_answers_with_a_warning(tokenizer_dirs, caplog):
    model = build_tiny("teacher", tokenizer_dirs["unigram"], max_txt_len=5)
    with caplog.at_level(logging.WARNING):
        out = model(make_batch(answers=("one two three four five six seven", "a")))
    assert out.logits.shape[1] == 5 and out.token_ids[0, -1] == model.tokenizer.eos_token_id
    assert "truncated" in caplog.text and "item0" in caplog.text


def test_clear_errors_for_bad_audio(student):
    with pytest.raises(ContractError, match="16000"):
        AudioBatch(
            torch.zeros(1, 8000),
            torch.tensor([8000]),
            ["asr"],
            [ASR],
            ["x"],
            ["a"],
            sample_rate=8000,
        )
    with pytest.raises(ContractError, match="empty waveform"):
        AudioBatch(torch.zeros(1, 0), torch.tensor([0]), ["asr"], [ASR], ["x"], ["a"])
    with pytest.raises(ValueError, match="unknown hidden"):
        student(make_batch(), hidden=("logits",))


def test_meta_build_allocates_nothing_and_counts_7b():
    cfg = AudioLLMConfig(
        whisper_config=dict(
            d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120
        ),
        llm_config=dict(
            model_type="llama",
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            vocab_size=32000,
        ),  # fmt: skip
        tokenizer_path="/nonexistent/tokenizer",
    )
    model = AudioLLM(cfg, meta=True)
    params = list(model.parameters())
    assert all(p.is_meta for p in params)
    assert 7.0e9 < sum(p.numel() for p in params) < 7.6e9
    assert model.num_windows(30 * 16_000) == 88


def test_config_round_trip_and_unknown_key(tokenizer_dirs):
    from distill._instantiate import ConfigError

    cfg = tiny_config(
        "student", tokenizer_dirs["bpe"], lora_targets=("q_proj", "v_proj", "gate_proj")
    )
    assert AudioLLMConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="lora_rnk"):
        AudioLLMConfig.from_dict({**cfg.to_dict(), "lora_rnk": 4})
    with pytest.raises(ConfigError, match="qformer_hidden"):
        cfg.replace(qformer_hidden=65)


def test_tiny_builds_are_seeded(tokenizer_dirs):
    a = build_tiny("teacher", tokenizer_dirs["unigram"], seed=3).state_dict()
    b = build_tiny("teacher", tokenizer_dirs["unigram"], seed=3).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_empty_answers_still_give_the_end_symbol(teacher):
    out = teacher(make_batch(answers=("", "")))
    assert out.token_ids.tolist() == [[teacher.tokenizer.eos_token_id]] * 2
    assert out.offsets.tolist() == [[[0, 0]]] * 2


def test_prefill_and_decode_step_agree_with_generate(teacher, batch):
    """The efficiency protocol's prefill + one cached step are HF generate's first 2 tokens."""
    from distill.eval.efficiency import decode_step, prefill

    teacher.eval()
    one = batch.select([0])
    with torch.no_grad():
        out, mask = prefill(teacher, one)
        first = out.logits[:, -1].argmax(-1, keepdim=True)
        step, mask2 = decode_step(teacher, first, out.past_key_values, mask)
        inp = teacher.prepare_inputs(one)
        ref = teacher.llama_model.generate(
            inputs_embeds=inp["inputs_embeds"], attention_mask=inp["attention_mask"],
            max_new_tokens=2, min_new_tokens=2, do_sample=False,
        )  # fmt: skip
    assert mask2.shape[1] == mask.shape[1] + 1
    assert ref[0, -2:].tolist() == [first[0, 0].item(), step.logits[0, -1].argmax().item()]
