"""`use_fast=False`: SALMONN's slow `LlamaTokenizer` against its fast twin, on a local
SentencePiece model trained the way Llama's was (BPE, byte fallback, identity normalization).

Where they agree: every SALMONN prompt piece, the BOS, the answers and `</s>`, under both
`legacy` settings (unset = True, SALMONN-13B's Vicuna v1.1; False, set by later Llama
tokenizer configs). Where they differ:

- with legacy=False only, a text that starts with a space: the slow tokenizer keeps one more
  "▁" token. SALMONN tokenizes no such text (its pieces start "USER:" and "</Speech>");
- decoded alone, the byte token <0x20> is " " slow and "" fast (so `AudioLLM.tokenizer_info`
  is built from the fast twin).
"""

from __future__ import annotations

import io

import pytest
import torch
from transformers import AutoTokenizer, LlamaTokenizer, LlamaTokenizerFast

from distill.modeling import prompt as P
from distill.modeling.tiny import build_tiny
from distill.modeling.tokenizers import default_corpus

from .conftest import make_batch

PROMPTS = (
    "Recognize the speech and give me the transcription.",
    "Please describe the audio.",
    "Please write down what your hear in the audio.",
)
TEMPLATE = "USER: {}\nASSISTANT:"


def train_sentencepiece(out_dir, legacy: bool | None) -> str:
    """A slow LlamaTokenizer dir (tokenizer.model, no tokenizer.json), as Vicuna ships."""
    spm = pytest.importorskip("sentencepiece")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(default_corpus()), model_writer=model, vocab_size=400,
        model_type="bpe", byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
        hard_vocab_limit=False, minloglevel=2,
    )  # fmt: skip
    out_dir.mkdir(parents=True)
    (out_dir / "tokenizer.model").write_bytes(model.getvalue())
    LlamaTokenizer(vocab_file=str(out_dir / "tokenizer.model"), legacy=legacy).save_pretrained(
        out_dir
    )
    return str(out_dir)


@pytest.fixture(scope="module")
def sp_dirs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("sentencepiece")
    return {legacy: train_sentencepiece(root / str(legacy), legacy) for legacy in (None, False)}


@pytest.mark.parametrize("legacy", [None, False])
def test_salmonn_prompt_gives_the_same_ids_slow_and_fast(sp_dirs, legacy):
    slow = P.load_tokenizer(sp_dirs[legacy], use_fast=False)
    fast = P.load_fast_twin(sp_dirs[legacy])
    assert type(slow) is LlamaTokenizer and type(fast) is LlamaTokenizerFast
    assert slow.legacy is (legacy is not False)
    assert (slow.bos_token_id, slow.eos_token_id, len(slow)) == (1, 2, len(fast))
    for instruction in PROMPTS:
        before, after = P.split_prompt(TEMPLATE, instruction)
        for text in (before, after):
            ids = slow(text, add_special_tokens=False)["input_ids"]
            assert len(ids) > 5 and ids == fast(text, add_special_tokens=False)["input_ids"]
    answers = ["the dog barks", "a loud bell rings near the window", ""]
    for text in answers + [a + "</s>" for a in answers]:
        assert slow(text)["input_ids"] == fast(text)["input_ids"]  # with BOS, as in training
    assert slow("the dog barks</s>", add_special_tokens=False)["input_ids"][-1] == 2


def test_slow_and_fast_differ_only_on_a_leading_space_without_legacy(sp_dirs):
    for legacy, extra in ((None, 0), (False, 1)):
        slow = P.load_tokenizer(sp_dirs[legacy], use_fast=False)
        fast = P.load_fast_twin(sp_dirs[legacy])
        for text in (" </Speech> x", "  two", " "):
            s = slow.convert_ids_to_tokens(slow(text, add_special_tokens=False)["input_ids"])
            f = fast.convert_ids_to_tokens(fast(text, add_special_tokens=False)["input_ids"])
            assert s == ["▁"] * extra + f


@pytest.fixture(scope="module")
def slow_and_fast_models(sp_dirs):
    slow = build_tiny("teacher", sp_dirs[None], seed=0, use_fast=False).eval()
    fast = build_tiny("teacher", sp_dirs[None], seed=0).eval()
    return slow, fast


def test_a_slow_model_matches_the_fast_one(slow_and_fast_models):
    """Same ids, hence same logits; offsets come from the fast twin; same greedy answers."""
    slow, fast = slow_and_fast_models
    assert not slow.tokenizer.is_fast and fast.tokenizer.is_fast
    assert slow.offset_tokenizer.is_fast and slow.stop_ids == fast.stop_ids == [2]
    batch = make_batch()
    a, b = slow(batch), fast(batch)
    assert torch.equal(a.token_ids, b.token_ids) and torch.equal(a.offsets, b.offsets)
    torch.testing.assert_close(a.logits, b.logits)
    assert a.tokenizer.same_as(b.tokenizer)  # the identity comes from the fast twin
    # decoded alone, the two kinds differ on one id: the space byte
    pieces = [P.make_tokenizer_info(m.tokenizer).pieces for m in (slow, fast)]
    differ = [(i, s, f) for i, (s, f) in enumerate(zip(*pieces)) if s != f]
    assert differ == [(slow.tokenizer.convert_tokens_to_ids("<0x20>"), " ", "")]
    assert slow.generate(batch, max_new_tokens=4) == fast.generate(batch, max_new_tokens=4)


def test_without_a_fast_twin_offsets_are_missing_and_alignment_says_why(
    slow_and_fast_models, monkeypatch
):
    from losses._reduce import LossInputError
    from losses.align import align_positions

    slow, fast = slow_and_fast_models
    monkeypatch.setitem(slow.__dict__, "offset_tokenizer", None)
    out = slow(make_batch())
    assert out.offsets is None and out.token_ids.tolist() == fast(make_batch()).token_ids.tolist()
    with pytest.raises(LossInputError, match=r"student has none.*use_fast=False"):
        align_positions(out.offsets, out.mask, fast(make_batch()).offsets, out.mask)


def test_use_fast_false_needs_a_slow_tokenizer(tokenizer_dirs, sp_dirs, tmp_path):
    with pytest.raises(ValueError, match=r"use_fast=False, but .* holds only a fast tokenizer"):
        build_tiny("student", tokenizer_dirs["bpe"], use_fast=False)
    slow = build_tiny("teacher", sp_dirs[None], seed=0, use_fast=False)
    slow.save_pretrained(tmp_path / "m", trainable_only=False)
    again = type(slow).from_pretrained(tmp_path / "m")
    assert again.config.use_fast is False and type(again.tokenizer) is LlamaTokenizer
    assert AutoTokenizer.from_pretrained(tmp_path / "m" / "tokenizer").is_fast  # twin converts
