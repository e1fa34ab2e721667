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
# End-of-answer tokens of the LLM families SALMONN-style models build on. Llama-3 ends a turn
# with <|eot_id|> (128009), a tool call with <|eom_id|> (128008) and a text with
# <|end_of_text|>; Qwen with <|im_end|> (chat) or <|endoftext|> (base); Vicuna with </s>.
# A model trained on one end_sym may still emit another of its family's, so all of them stop.
END_TOKENS = ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|im_end|>", "<|endoftext|>", "</s>")


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
    offsets: list[tuple[int, int]] | None  # None: a slow tokenizer and no fast twin that agrees
    truncated: bool = False


def end_sym_ids(tokenizer, end_sym: str) -> list[int]:
    """Token ids of end_sym (usually one special token)."""
    ids = tokenizer(end_sym, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"end_sym {end_sym!r} tokenizes to nothing with this tokenizer")
    return list(ids)


def stop_token_ids(tokenizer, end_sym: str) -> list[int]:
    """Ids that end a generated answer, in this order, without repeats: end_sym (when it is
    one token), the tokenizer's eos, and each `END_TOKENS` entry among its added tokens.

    An end_sym of several tokens (`</s>` in a byte-level vocabulary) cannot stop decoding by
    id; the answer text is cut at it afterwards instead.
    """
    sym = end_sym_ids(tokenizer, end_sym)
    out = list(sym) if len(sym) == 1 else []
    if tokenizer.eos_token_id is not None:
        out.append(tokenizer.eos_token_id)
    added = tokenizer.get_added_vocab()
    out += [added[t] for t in END_TOKENS if t in added]
    return list(dict.fromkeys(out))


def tokenize_answers(
    tokenizer,
    answers: list[str],
    end_ids: list[int],
    max_len: int,
    ids: list[str] | None = None,
    offset_tokenizer=None,
) -> list[TokenizedAnswer]:
    """Tokenize answers with offsets and append end_sym.

    Answers whose tokens plus end_sym exceed `max_len` are cut to fit (end_sym is kept,
    unlike SALMONN's plain truncation, so every target sequence still teaches stopping)
    and a warning names the items.

    A slow tokenizer has no offsets: they come from `offset_tokenizer` (its fast twin) when
    that gives the same ids for every answer, else every answer's offsets are None.
    """
    answers = list(answers)
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(answers, add_special_tokens=False, return_offsets_mapping=True)
        all_ids, all_offs = enc["input_ids"], enc["offset_mapping"]
    else:
        all_ids = tokenizer(answers, add_special_tokens=False)["input_ids"]
        all_offs = _twin_offsets(offset_tokenizer, answers, all_ids)
    room = max_len - len(end_ids)
    out, cut = [], []
    for i, tok_ids in enumerate(all_ids):
        n = len(answers[i])
        truncated = len(tok_ids) > room
        if truncated:
            cut.append(ids[i] if ids else i)
        offsets = None
        if all_offs is not None:
            offsets = [tuple(o) for o in all_offs[i][:room]] + [(n, n)] * len(end_ids)
        out.append(
            TokenizedAnswer(
                ids=list(tok_ids[:room]) + list(end_ids), offsets=offsets, truncated=truncated
            )
        )
    if cut:
        logger.warning(
            "%d answer(s) longer than max_txt_len=%d tokens were truncated: %s",
            len(cut), max_len, cut[:10],
        )  # fmt: skip
    return out


def _twin_offsets(fast, answers: list[str], token_ids: list[list[int]]) -> list | None:
    """Offsets from the fast twin, or None when there is none or it splits differently."""
    if fast is None:
        return None
    enc = fast(answers, add_special_tokens=False, return_offsets_mapping=True)
    if [list(t) for t in enc["input_ids"]] != [list(t) for t in token_ids]:
        bad = next(a for a, f, s in zip(answers, enc["input_ids"], token_ids) if list(f) != list(s))
        logger.warning("slow and fast tokenizers split %r differently: no offsets", bad[:80])
        return None
    return enc["offset_mapping"]


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


def load_tokenizer(path: str, trust_remote_code: bool = False, use_fast: bool = True):
    """A tokenizer from a local dir (never the network).

    Args:
        path: the tokenizer dir.
        trust_remote_code: for tokenizers with their own code.
        use_fast: the fast (Rust) tokenizer, which gives offsets; False loads the slow
            one, as SALMONN does (`LlamaTokenizer`), and needs `sentencepiece` for Llama.

    Raises:
        ValueError: the dir holds no tokenizer of the kind asked for.
    """
    from transformers import AutoTokenizer

    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer dir not found: {path}")
    tok = AutoTokenizer.from_pretrained(
        path, local_files_only=True, use_fast=use_fast, trust_remote_code=trust_remote_code
    )
    is_fast = getattr(tok, "is_fast", False)
    if use_fast and not is_fast:
        raise ValueError(
            f"tokenizer at {path} is not a fast tokenizer; offsets need one "
            "(AudioLLMConfig.use_fast=False accepts a slow one)"
        )
    if not use_fast and is_fast:
        raise ValueError(
            f"AudioLLMConfig.use_fast=False, but {path} holds only a fast tokenizer (no "
            "slow one: Llama-3 ships only tokenizer.json); set use_fast=True"
        )
    return tok


def load_fast_twin(path: str, trust_remote_code: bool = False):
    """The fast tokenizer of a slow tokenizer's dir (converted from it if need be), for
    answer offsets; None, with a warning, when it cannot be built."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(
            path, local_files_only=True, use_fast=True, trust_remote_code=trust_remote_code
        )
    except Exception as err:  # conversion can fail in many ways (protobuf, sentencepiece)
        logger.warning("no fast tokenizer for offsets at %s (%s): outputs carry none", path, err)
        return None
    return tok if getattr(tok, "is_fast", False) else None
