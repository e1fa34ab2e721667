"""Prompt text, answer tokenization and tokenizer identity for an `AudioLLM`.

SALMONN's input to the LLM is

    [BOS] + tok("USER: <Speech>") + audio tokens + tok("</Speech> {instruction}\\nASSISTANT:")
          + tok(answer) + tok(end_sym)

The prompt comes from `prompt_template.format("<Speech><SpeechHere></Speech> " + instruction)`,
split at `<SpeechHere>`; the pieces and the answer are tokenized separately without
special tokens, as SALMONN does. Labels cover only the answer and end_sym.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from distill.contracts import TokenizerInfo

logger = logging.getLogger(__name__)

SPEECH_SLOT = "<SpeechHere>"
SPEECH_PREFIX = "<Speech><SpeechHere></Speech> "


def full_prompt(template: str, instruction: str) -> str:
    """The prompt text with the `<SpeechHere>` slot.

    An instruction that already holds `<SpeechHere>` (a line of SALMONN's prompt file) is
    used as is; a bare instruction gets SALMONN's `<Speech><SpeechHere></Speech> ` prefix.
    """
    inner = instruction if SPEECH_SLOT in instruction else SPEECH_PREFIX + instruction
    prompt = template.format(inner)
    if prompt.count(SPEECH_SLOT) != 1:
        raise ValueError(f"prompt must hold exactly one {SPEECH_SLOT}, got {prompt!r}")
    return prompt


def split_prompt(template: str, instruction: str) -> tuple[str, str]:
    """(text before the audio, text after the audio)."""
    before, after = full_prompt(template, instruction).split(SPEECH_SLOT)
    return before, after


@dataclass
class TokenizedAnswer:
    """One answer's tokens: ids (answer then end_sym) and character offsets in the answer."""

    ids: list[int]
    offsets: list[tuple[int, int]]
    truncated: bool = False


def end_sym_ids(tokenizer, end_sym: str) -> list[int]:
    """Token ids of end_sym (usually one special token)."""
    ids = tokenizer(end_sym, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"end_sym {end_sym!r} tokenizes to nothing with this tokenizer")
    return list(ids)


def tokenize_answers(
    tokenizer, answers: list[str], end_ids: list[int], max_len: int, ids: list[str] | None = None
) -> list[TokenizedAnswer]:
    """Tokenize answers with offsets and append end_sym.

    Answers whose tokens plus end_sym exceed `max_len` are cut to fit (end_sym is kept,
    unlike SALMONN's plain truncation, so every target sequence still teaches stopping)
    and a warning names the items.
    """
    enc = tokenizer(list(answers), add_special_tokens=False, return_offsets_mapping=True)
    room = max_len - len(end_ids)
    out, cut = [], []
    for i, (tok_ids, offs) in enumerate(zip(enc["input_ids"], enc["offset_mapping"])):
        n = len(answers[i])
        truncated = len(tok_ids) > room
        if truncated:
            cut.append(ids[i] if ids else i)
            tok_ids, offs = tok_ids[:room], offs[:room]
        out.append(
            TokenizedAnswer(
                ids=list(tok_ids) + list(end_ids),
                offsets=[tuple(o) for o in offs] + [(n, n)] * len(end_ids),
                truncated=truncated,
            )
        )
    if cut:
        logger.warning(
            "%d answer(s) longer than max_txt_len=%d tokens were truncated: %s",
            len(cut), max_len, cut[:10],
        )  # fmt: skip
    return out


def make_tokenizer_info(tokenizer, name: str | None = None) -> TokenizerInfo:
    """Identity of a tokenizer: each id decoded alone (length = len(tokenizer)).

    A word-initial token keeps its word boundary as a leading space in every family:
    byte-level BPE ("Ġmoon", Qwen/Llama-3) decodes to " moon" already, while SentencePiece
    ("▁moon", Vicuna/Llama-2) decodes alone to "moon" and is given the space back. So the
    shared vocabulary of a Vicuna teacher and a Qwen student pairs " moon" with " moon".
    """
    n = len(tokenizer)
    pieces = tokenizer.batch_decode([[i] for i in range(n)], clean_up_tokenization_spaces=False)
    raw = tokenizer.convert_ids_to_tokens(list(range(n)))
    pieces = [
        " " + p if isinstance(r, str) and r.startswith("\u2581") and not p.startswith(" ") else p
        for r, p in zip(raw, pieces)
    ]
    if name is None:
        name = os.path.basename(os.path.normpath(tokenizer.name_or_path or "")) or "tokenizer"
    return TokenizerInfo(name=name, pieces=tuple(pieces))


def load_tokenizer(path: str, trust_remote_code: bool = False):
    """A fast tokenizer from a local dir (never the network)."""
    from transformers import AutoTokenizer

    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer dir not found: {path}")
    tok = AutoTokenizer.from_pretrained(
        path, local_files_only=True, use_fast=True, trust_remote_code=trust_remote_code
    )
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"tokenizer at {path} is not a fast tokenizer; offsets need one")
    return tok
