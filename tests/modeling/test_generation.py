"""Decoding as the released models decode: min_length, every end id stops, the presets."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from distill._instantiate import ConfigError
from distill.modeling.generation import (
    DECODE_PRESETS,
    DecodeSettings,
    decode_settings,
    generate_ids,
)
from distill.modeling.llm import base_causal_lm
from distill.modeling.prompt import stop_token_ids
from distill.modeling.tiny import build_tiny

from .conftest import make_batch

# Llama-3's end tokens, added to the tiny Qwen-like tokenizer (which has <|im_end|> and
# <|endoftext|> already), so one vocabulary holds five of the six family end tokens
LLAMA3_ENDS = ["<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"]


@pytest.fixture(scope="module")
def family_tokenizer(tokenizer_dirs, tmp_path_factory) -> str:
    tok = AutoTokenizer.from_pretrained(tokenizer_dirs["bpe"])
    tok.add_special_tokens({"additional_special_tokens": LLAMA3_ENDS})
    out = tmp_path_factory.mktemp("family") / "bpe"
    tok.save_pretrained(out)
    return str(out)


def force_logits(model, bias: dict[int, float]) -> None:
    """Add a fixed bias to the LM head's logits: the forced tokens win at every step."""
    vec = torch.zeros(len(model.tokenizer))
    for i, value in bias.items():
        vec[i] = value
    head = base_causal_lm(model.llama_model).get_output_embeddings()
    head.register_forward_hook(lambda module, args, out: out + vec.to(out))


def word_id(tok, word: str) -> int:
    (i,) = tok(word, add_special_tokens=False)["input_ids"]
    return i


# ---- min_length ------------------------------------------------------------------------


@pytest.mark.parametrize("num_beams", [1, 3])
def test_min_length_one_never_gives_an_empty_answer(teacher, num_beams):
    """The end token is the top logit from step 0 and "dog" the runner-up: min_length=1 masks
    the end ids at the first step only, so the answer is exactly "dog"; 0 answers ""."""
    tok = teacher.tokenizer
    dog = word_id(tok, "dog")
    force_logits(teacher, {tok.eos_token_id: 100.0, dog: 50.0})
    batch = make_batch()
    kept = teacher.generate(batch, num_beams=num_beams, min_length=1, max_new_tokens=5)
    empty = teacher.generate(batch, num_beams=num_beams, min_length=0, max_new_tokens=5)
    assert kept == ["dog", "dog"]
    assert empty == ["", ""]
    settings = decode_settings(num_beams=num_beams, max_new_tokens=5)  # default min_length 1
    assert generate_ids(teacher, batch, settings).tolist() == [[dog, tok.eos_token_id]] * 2
    zero = decode_settings(settings, min_length=0)
    assert generate_ids(teacher, batch, zero).tolist() == [[tok.eos_token_id]] * 2


def test_generate_defaults_to_min_length_one(teacher):
    """Without overrides `generate` decodes with the greedy preset, whose min_length is 1."""
    tok = teacher.tokenizer
    force_logits(teacher, {tok.eos_token_id: 100.0, word_id(tok, "dog"): 50.0})
    assert teacher.generate(make_batch()) == ["dog", "dog"]
    assert teacher.generate(make_batch(), "salmonn", max_new_tokens=4) == ["dog", "dog"]


# ---- stop ids --------------------------------------------------------------------------


def test_stop_ids_of_the_tiny_tokenizers(tokenizer_dirs, family_tokenizer):
    bpe = AutoTokenizer.from_pretrained(tokenizer_dirs["bpe"])
    uni = AutoTokenizer.from_pretrained(tokenizer_dirs["unigram"])
    fam = AutoTokenizer.from_pretrained(family_tokenizer)
    # end_sym, eos, then END_TOKENS order: <|eot_id|> <|eom_id|> <|end_of_text|> <|im_end|>
    # <|endoftext|> </s>; the bpe pad <|endoftext|> is Qwen-base's end and stops too
    assert stop_token_ids(bpe, "<|im_end|>") == [2, 0]
    assert stop_token_ids(uni, "</s>") == [3]
    assert stop_token_ids(fam, "<|im_end|>") == [2, 512, 513, 514, 0]
    # an end_sym of several tokens cannot stop by id: eos and the family's tokens still do
    assert len(bpe("</s>", add_special_tokens=False)["input_ids"]) > 1
    assert stop_token_ids(bpe, "</s>") == [2, 0]


@pytest.mark.parametrize("end", ["<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|endoftext|>"])
def test_generation_stops_at_every_end_token(family_tokenizer, end):
    """With `end` forced after the first step, decoding stops right there (2 tokens), for
    greedy and for beam search."""
    model = build_tiny("student", family_tokenizer, seed=0)
    tok = model.tokenizer
    end_id, the = tok.convert_tokens_to_ids(end), word_id(tok, " the")
    assert model.stop_ids == [2, 512, 513, 514, 0]
    force_logits(model, {end_id: 100.0, the: 50.0})
    for beams in (1, 3):
        settings = decode_settings(num_beams=beams, max_new_tokens=6)
        assert generate_ids(model, make_batch(), settings).tolist() == [[the, end_id]] * 2
    assert model.generate(make_batch(), max_new_tokens=6) == ["the", "the"]


def test_a_special_token_that_is_no_end_does_not_stop(family_tokenizer):
    """The control: <|im_start|> is special but no end token, so decoding runs to the cap."""
    model = build_tiny("student", family_tokenizer, seed=0)
    start = model.tokenizer.convert_tokens_to_ids("<|im_start|>")
    force_logits(model, {start: 100.0})
    ids = generate_ids(model, make_batch(), decode_settings(max_new_tokens=4))
    assert ids.tolist() == [[start] * 4] * 2
    assert model.generate(make_batch(), max_new_tokens=4) == ["", ""]  # dropped as special


# ---- settings --------------------------------------------------------------------------


def test_presets_hold_salmonns_decode_config():
    assert DECODE_PRESETS["salmonn"].to_dict() == {
        "num_beams": 4,
        "max_new_tokens": 200,
        "min_length": 1,
        "repetition_penalty": 1.0,
        "length_penalty": 1.0,
        "do_sample": False,
        "temperature": 1.0,
        "top_p": 0.9,
    }
    assert DECODE_PRESETS["greedy"] == DecodeSettings(num_beams=1, max_new_tokens=64, min_length=1)
    # min_length is passed as min_new_tokens; top_p and temperature only when sampling
    assert DECODE_PRESETS["salmonn"].generation_kwargs() == {
        "num_beams": 4,
        "max_new_tokens": 200,
        "min_new_tokens": 1,
        "repetition_penalty": 1.0,
        "length_penalty": 1.0,
        "do_sample": False,
    }
    sampled = decode_settings(do_sample=True, top_p=0.5).generation_kwargs()
    assert (sampled["top_p"], sampled["temperature"]) == (0.5, 1.0)


def test_decode_settings_overrides_and_errors():
    s = decode_settings("salmonn", num_beams=2, max_new_tokens=None, length_penalty="1e0")
    assert (s.num_beams, s.max_new_tokens, s.length_penalty) == (2, 200, 1.0)
    with pytest.raises(ConfigError, match=r"eval\.decode must be one of \['greedy', 'salmonn'\]"):
        decode_settings("beam", where="eval")
    with pytest.raises(ConfigError, match=r"eval\.num_beems"):
        decode_settings(where="eval", num_beems=4)
    with pytest.raises(ConfigError, match=r"eval\.num_beams must be >= 1, got 0"):
        decode_settings(where="eval", num_beams=0)
    with pytest.raises(ConfigError, match=r"decode\.min_length must be in \[0, max_new_tokens=3\]"):
        decode_settings(max_new_tokens=3, min_length=4)
