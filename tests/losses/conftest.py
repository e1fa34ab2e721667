"""Fixtures for the loss tests: two tiny tokenizers trained here, and output builders.

The tokenizers are trained with the `tokenizers` library on a small English text (no
network): a byte-level BPE (offsets trimmed of the leading space) and a whitespace
WordLevel. Both know the end symbol "</s>". `TokenizerInfo.pieces` is each id decoded alone.
"""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from distill.contracts import ModelOutputs, TeacherSignals, TokenizerInfo

TEXT = [
    "a dog barks in the distance while a car passes by",
    "the cat sat on the mat and looked at the dog",
    "rain falls on the roof of the old house",
    "birds sing in the morning near the river",
    "a man speaks slowly about the weather today",
    "the music plays loudly in the small room",
    "children laugh and run across the green park",
    "wind blows through the tall trees at night",
] * 4
END = "</s>"


def _bpe() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=[END], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(TEXT, trainer)
    return tok


def _wordlevel() -> Tokenizer:
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(TEXT, trainers.WordLevelTrainer(special_tokens=["[UNK]", END]))
    return tok


def _info(tok: Tokenizer, name: str) -> TokenizerInfo:
    pieces = tuple(tok.decode([i], skip_special_tokens=False) for i in range(tok.get_vocab_size()))
    return TokenizerInfo(name=name, pieces=pieces)


class Tok:
    """A trained tokenizer with its `TokenizerInfo`, able to build answer-span outputs."""

    def __init__(self, tok: Tokenizer, name: str) -> None:
        self.tok, self.info = tok, _info(tok, name)
        self.end_id = tok.token_to_id(END)

    def encode(self, answers: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """token_ids [b, n], offsets [b, n, 2], mask [b, n] of answer + end symbol, right-padded."""
        rows = []
        for text in answers:
            enc = self.tok.encode(text)
            ids = list(enc.ids) + [self.end_id]
            offs = [list(o) for o in enc.offsets] + [[len(text), len(text)]]
            rows.append((ids, offs))
        n = max(len(r[0]) for r in rows)
        b = len(rows)
        ids = torch.zeros(b, n, dtype=torch.long)
        offsets = torch.zeros(b, n, 2, dtype=torch.long)
        mask = torch.zeros(b, n, dtype=torch.bool)
        for i, (row_ids, row_offs) in enumerate(rows):
            ids[i, : len(row_ids)] = torch.tensor(row_ids)
            offsets[i, : len(row_ids)] = torch.tensor(row_offs)
            mask[i, : len(row_ids)] = True
        return ids, offsets, mask

    def outputs(
        self, answers: list[str], seed: int = 0, dtype=torch.float64, teacher: bool = False
    ):
        ids, offsets, mask = self.encode(answers)
        g = torch.Generator().manual_seed(seed)
        logits = torch.randn(*ids.shape, self.info.vocab_size, generator=g, dtype=dtype) * 2
        kwargs = dict(mask=mask, token_ids=ids, offsets=offsets, tokenizer=self.info)
        if teacher:
            return TeacherSignals(**kwargs, logits=logits)
        return ModelOutputs(**kwargs, logits=logits.requires_grad_(True))


@pytest.fixture(scope="session")
def bpe() -> Tok:
    return Tok(_bpe(), "tiny-bpe")


@pytest.fixture(scope="session")
def wordlevel() -> Tok:
    return Tok(_wordlevel(), "tiny-wordlevel")


def make_pair(b=2, n=4, v=7, seed=0, dtype=torch.float64, lengths=None):
    """Random same-tokenizer (student, teacher) with right padding given by `lengths`."""
    g = torch.Generator().manual_seed(seed)
    lengths = lengths or [n - i % 2 for i in range(b)]
    mask = torch.arange(n).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    ids = torch.randint(0, v, (b, n), generator=g) * mask
    s = (torch.randn(b, n, v, generator=g, dtype=dtype) * 1.5).requires_grad_(True)
    t = torch.randn(b, n, v, generator=g, dtype=dtype) * 1.5
    return ModelOutputs(mask=mask, token_ids=ids, logits=s), TeacherSignals(
        mask=mask, token_ids=ids, logits=t
    )


def pad_batch(
    student: ModelOutputs, teacher: TeacherSignals, extra_items: int = 1, extra_pos: int = 2, seed=9
):
    """The same batch with `extra_items` all-padding items and `extra_pos` padded positions (random logits)."""
    g = torch.Generator().manual_seed(seed)

    def grow(x, fill_random):
        b, n = x.shape[:2]
        shape = (b + extra_items, n + extra_pos, *x.shape[2:])
        out = (
            torch.randn(shape, generator=g, dtype=x.dtype)
            if fill_random
            else torch.zeros(shape, dtype=x.dtype)
        )
        out[:b, :n] = x.detach()
        return out

    def build(cls, sig, logits):
        fields = dict(mask=grow(sig.mask, False), token_ids=grow(sig.token_ids, False))
        if sig.offsets is not None:
            fields["offsets"] = grow(sig.offsets, False)
        for name in ("qformer",):
            if getattr(sig, name) is not None:
                fields[name] = grow(getattr(sig, name), True)
                fields["qformer_mask"] = grow(sig.qformer_mask, False)
        fields["tokenizer"] = sig.tokenizer
        return cls(**fields, logits=logits)

    s = build(ModelOutputs, student, grow(student.logits, True).requires_grad_(True))
    t = build(TeacherSignals, teacher, grow(teacher.logits, True))
    return s, t
