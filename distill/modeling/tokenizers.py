"""Tiny tokenizers trained locally, so tests and demos never touch the network.

Two flavors that differ the way a Qwen student and a Llama teacher differ, so the
cross-tokenizer code paths always run:

- "bpe": byte-level BPE (Qwen-like). Specials `<|endoftext|>` (pad), `<|im_start|>` (bos),
  `<|im_end|>` (eos and end_sym). Spaces are part of the following token ("Ġword").
- "unigram": SentencePiece-style unigram with a `▁` word marker (Llama-like). Specials
  `<unk>`, `<s>` (bos), `</s>` (eos and end_sym), `<pad>`.

Both are saved as Hugging Face fast-tokenizer dirs (`AutoTokenizer.from_pretrained`).
"""

from __future__ import annotations

import os
import random

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

FLAVORS = {
    "bpe": {
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "end_sym": "<|im_end|>",
    },
    "unigram": {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "end_sym": "</s>",
    },
}

_PROMPTS = [
    "USER: <Speech>",
    "</Speech> Recognize the speech and give me the transcription.\nASSISTANT:",
    "</Speech> Please describe the audio.\nASSISTANT:",
    "</Speech> Please write down what your hear in the audio.\nASSISTANT:",
]
_NOUNS = (
    "dog cat bird car train bell door phone rain wind water baby man woman child crowd "
    "engine horn drum piano guitar violin music voice street kitchen river sea storm "
    "clock siren alarm truck bus plane bike boat dish glass cup table window house "
    "garden forest park city road bridge tree leaf fire thunder wave machine fan radio "
    "television computer keyboard speaker teacher doctor friend mother father brother "
    "sister people dinner morning evening night day week year time question answer"
).split()
_VERBS = (
    "barks meows sings drives rings opens closes falls blows flows cries talks laughs "
    "shouts runs plays hums starts stops moves passes knocks clicks beeps whistles "
    "speaks walks jumps breaks rolls ticks buzzes splashes crackles rumbles"
).split()
_ADJS = (
    "loud quiet soft distant close small large old young happy busy heavy light fast "
    "slow bright dark warm cold gentle sharp low high short long clear noisy calm"
).split()
_PLACES = (
    "in the background near the window outside the house on the street in a room "
    "under the bridge at night in the morning by the river in the distance"
).split(" ")
_WORDS = (
    "the a an and or but with without while then after before over under into from "
    "one two three four five six seven eight nine ten hello yes no please thank you "
    "good great fine well very some many few more less first last next again always "
    "never often sometimes here there this that these those it is are was were be been "
    "have has had do does did will would can could should may might must i we they he she"
).split()


def default_corpus(n_sentences: int = 600, seed: int = 0) -> list[str]:
    """A small English corpus: SALMONN prompts, word lists and seeded template sentences."""
    rng = random.Random(seed)
    places = [" ".join(_PLACES[i : i + 3]) for i in range(0, len(_PLACES) - 2, 3)]
    texts = list(_PROMPTS) + [" ".join(_NOUNS), " ".join(_VERBS), " ".join(_ADJS), " ".join(_WORDS)]
    for _ in range(n_sentences):
        a, n, v, p = rng.choice(_ADJS), rng.choice(_NOUNS), rng.choice(_VERBS), rng.choice(places)
        form = rng.randrange(4)
        if form == 0:
            texts.append(f"A {a} {n} {v} {p}.")
        elif form == 1:
            texts.append(f"The {n} {v} while a {rng.choice(_NOUNS)} {rng.choice(_VERBS)}.")
        elif form == 2:
            texts.append(" ".join(rng.choice(_WORDS + _NOUNS) for _ in range(rng.randint(2, 8))))
        else:
            texts.append(f"{n.capitalize()} and {rng.choice(_NOUNS)}, {a} and {rng.choice(_ADJS)}!")
    return texts


def train_tiny_tokenizer(
    out_dir: str | os.PathLike,
    flavor: str = "bpe",
    texts: list[str] | None = None,
    vocab_size: int | None = None,
    prefix_space: bool = False,
) -> str:
    """Train a tiny tokenizer and save it as a Hugging Face fast-tokenizer dir.

    Args:
        out_dir: where to save (created).
        flavor: "bpe" (byte-level, Qwen-like) or "unigram" (Llama-like).
        texts: training texts; `default_corpus()` when None. Task prompts are always added.
        vocab_size: target size (bpe default 512 incl. the 256 bytes; unigram default 384;
            unigram may stop below it on a small corpus).
        prefix_space: bpe only: add a space before the text, so a word is the same token
            ("Ġgreen") first in a sentence as after a space (as Llama-2 does with "▁").

    Returns:
        `out_dir` as a string.
    """
    from transformers import PreTrainedTokenizerFast

    if flavor not in FLAVORS:
        raise ValueError(f"unknown tokenizer flavor {flavor!r}; expected one of {sorted(FLAVORS)}")
    spec = FLAVORS[flavor]
    specials = [
        t for t in (spec["pad_token"], spec["unk_token"], spec["bos_token"], spec["eos_token"]) if t
    ]
    corpus = list(_PROMPTS) + list(texts if texts is not None else default_corpus())
    if flavor == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix_space)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size or 512,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    else:
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size or 384,
            special_tokens=specials,
            unk_token=spec["unk_token"],
            show_progress=False,
        )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=spec["bos_token"],
        eos_token=spec["eos_token"],
        pad_token=spec["pad_token"],
        unk_token=spec["unk_token"],
        clean_up_tokenization_spaces=False,
        **({"add_prefix_space": prefix_space} if flavor == "bpe" else {}),
    )
    fast.name_or_path = f"tiny-{flavor}-{len(fast)}"
    out = os.fspath(out_dir)
    os.makedirs(out, exist_ok=True)
    fast.save_pretrained(out)
    return out


def tokenizer_end_sym(flavor: str) -> str:
    """The end symbol that goes with a tiny tokenizer flavor."""
    return FLAVORS[flavor]["end_sym"]
