"""The two tiny tokenizers: loadable, different, with the right specials and offsets."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from distill.modeling.prompt import full_prompt, make_tokenizer_info, split_prompt, tokenize_answers
from distill.modeling.tokenizers import default_corpus, tokenizer_end_sym, train_tiny_tokenizer


@pytest.mark.parametrize(
    ("flavor", "bos", "eos", "pad"),
    [("bpe", "<|im_start|>", "<|im_end|>", "<|endoftext|>"), ("unigram", "<s>", "</s>", "<pad>")],
)
def test_flavors_load_with_autotokenizer(tokenizer_dirs, flavor, bos, eos, pad):
    tok = AutoTokenizer.from_pretrained(tokenizer_dirs[flavor])
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (bos, eos, pad)
    assert tokenizer_end_sym(flavor) == eos
    ids = tok(f"a dog barks{eos}", add_special_tokens=False)["input_ids"]
    assert ids[-1] == tok.eos_token_id  # the end symbol is one special token
    text = "the quick dog barks near the window"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_the_two_tokenizers_differ(tokenizer_dirs):
    bpe = make_tokenizer_info(AutoTokenizer.from_pretrained(tokenizer_dirs["bpe"]))
    uni = make_tokenizer_info(AutoTokenizer.from_pretrained(tokenizer_dirs["unigram"]))
    assert not bpe.same_as(uni)
    assert bpe.vocab_size == 512 and 200 < uni.vocab_size <= 384
    assert len(set(bpe.pieces) & set(uni.pieces)) > 20  # some shared surface pieces


def test_answer_offsets_cover_the_text(tokenizer_dirs):
    for flavor in ("bpe", "unigram"):
        tok = AutoTokenizer.from_pretrained(tokenizer_dirs[flavor])
        end = tok(tok.eos_token, add_special_tokens=False)["input_ids"]
        (ans,) = tokenize_answers(tok, ["a loud bell rings"], end, max_len=50)
        assert ans.ids[-1] == tok.eos_token_id and ans.offsets[-1] == (17, 17)
        assert "".join("a loud bell rings"[s:e] for s, e in ans.offsets) == "a loud bell rings"


def test_custom_texts_and_vocab_size(tmp_path):
    texts = ["zebra xylophone quartz"] * 50 + default_corpus(50)
    path = train_tiny_tokenizer(tmp_path / "t", "bpe", texts=texts, vocab_size=300)
    tok = AutoTokenizer.from_pretrained(path)
    assert len(tok) == 300
    assert len(tok("zebra", add_special_tokens=False)["input_ids"]) <= 2
    with pytest.raises(ValueError, match="wordpiece"):
        train_tiny_tokenizer(tmp_path / "x", "wordpiece")


def test_prompt_template_split():
    template = "USER: {}\nASSISTANT:"
    instruction = "Recognize the speech and give me the transcription."
    assert (
        full_prompt(template, instruction)
        == f"USER: <Speech><SpeechHere></Speech> {instruction}\nASSISTANT:"
    )
    assert split_prompt(template, instruction) == (
        "USER: <Speech>",
        f"</Speech> {instruction}\nASSISTANT:",
    )
    # a SALMONN prompt-file line is used as is
    assert split_prompt(template, "<SpeechHere> What?") == ("USER: ", " What?\nASSISTANT:")
