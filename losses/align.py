"""Answer-span alignment across tokenizers, and the shared-vocabulary map.

Glossary: b batch, n student answer tokens, m teacher answer tokens, v vocab, s shared ids.

Both models tokenize the same answer text, and `ModelOutputs.offsets` gives each token's
character span (start, end) in that text; the end symbol gets the empty span (len, len).

Pairing rule (`rule="exact"`, the default): student token i is paired with teacher token j
when their spans are identical, (start_i, end_i) == (start_j, end_j). Words both tokenizers
keep whole pair up; tokens that split a word differently stay unpaired and are excluded
from cross-tokenizer KD (they still count in CE). The two end symbols pair with each other.
`rule="end"` is looser: student token i is paired with the last teacher token whose span
ends at the same character (e.g. student "ing" with teacher "ring"); a zero-width token
(the end symbol) pairs only with a zero-width token.

The shared vocabulary is the set of token ids whose piece strings (each id decoded alone,
`TokenizerInfo.pieces`) are equal in both tokenizers. When a piece occurs several times
in one vocabulary the lowest id is used.
"""

from __future__ import annotations

import torch
from torch import Tensor

from distill.contracts import TokenizerInfo
from losses._reduce import LossInputError

RULES = ("exact", "end")


def align_positions(
    student_offsets: Tensor | None,
    student_mask: Tensor,
    teacher_offsets: Tensor | None,
    teacher_mask: Tensor,
    rule: str = "exact",
) -> tuple[Tensor, Tensor]:
    """Pair each student answer token with a teacher answer token by character spans.

    Args:
        student_offsets: [b, n, 2] int64 (start, end) of each student token.
        student_mask: [b, n] bool.
        teacher_offsets: [b, m, 2] int64.
        teacher_mask: [b, m] bool.
        rule: "exact" (identical spans) or "end" (same end character, last such teacher token).

    Returns:
        index: [b, n] int64 teacher position paired with each student token (0 where unpaired).
        paired: [b, n] bool, True where a pair exists (and both tokens are valid).

    Raises:
        LossInputError: an unknown rule, or a side without offsets (None).
    """
    if rule not in RULES:
        raise LossInputError(f"alignment rule {rule!r} unknown; expected one of {RULES}")
    if student_offsets is None or teacher_offsets is None:
        side = "student" if student_offsets is None else "teacher"
        raise LossInputError(
            f"cross-tokenizer alignment needs character offsets, and the {side} has none: a "
            "slow tokenizer (AudioLLMConfig.use_fast=False) gives offsets only through a fast "
            "twin that splits the answers the same way"
        )
    if student_offsets.shape[0] != teacher_offsets.shape[0]:
        raise LossInputError(
            f"align_positions: student batch {student_offsets.shape[0]} != teacher "
            f"batch {teacher_offsets.shape[0]}"
        )
    s = student_offsets.unsqueeze(2)  # [b, n, 1, 2]
    t = teacher_offsets.to(student_offsets.device).unsqueeze(1)  # [b, 1, m, 2]
    if rule == "exact":
        match = (s == t).all(dim=-1)
    else:
        empty_s, empty_t = s[..., 0] == s[..., 1], t[..., 0] == t[..., 1]
        match = (s[..., 1] == t[..., 1]) & (empty_s == empty_t)  # end symbols pair only together
    match = match & student_mask.unsqueeze(2) & teacher_mask.to(match.device).unsqueeze(1)
    paired = match.any(dim=-1)
    m = match.shape[-1]
    # last matching teacher position: argmax over positions weighted by index
    order = torch.arange(1, m + 1, device=match.device)
    index = (match.long() * order).argmax(dim=-1)
    return index, paired


_SHARED_CACHE: dict[tuple[str, str], tuple[Tensor, Tensor]] = {}


def _shared_vocab_build(student: TokenizerInfo, teacher: TokenizerInfo) -> tuple[Tensor, Tensor]:
    teacher_first: dict[str, int] = {}
    for i, piece in enumerate(teacher.pieces):
        teacher_first.setdefault(piece, i)
    seen: set[str] = set()
    student_ids, teacher_ids = [], []
    for i, piece in enumerate(student.pieces):
        if piece in seen or piece not in teacher_first:
            continue
        seen.add(piece)
        student_ids.append(i)
        teacher_ids.append(teacher_first[piece])
    return torch.tensor(student_ids, dtype=torch.long), torch.tensor(teacher_ids, dtype=torch.long)


def shared_vocab(student: TokenizerInfo, teacher: TokenizerInfo) -> tuple[Tensor, Tensor]:
    """Ids of the tokens whose pieces are equal in both tokenizers.

    Returns:
        (student_ids [s], teacher_ids [s]) int64, ordered by student id; entry i of both
        decodes to the same string. Cached per pair of tokenizers.
    """
    key = (student.fingerprint, teacher.fingerprint)
    if key not in _SHARED_CACHE:
        _SHARED_CACHE[key] = _shared_vocab_build(student, teacher)
    student_ids, teacher_ids = _SHARED_CACHE[key]
    if student_ids.numel() == 0:
        raise LossInputError(
            f"tokenizers {student.name!r} and {teacher.name!r} share no piece; "
            "use the learned vocabulary bridge (cross_tokenizer='bridge') instead"
        )
    return student_ids, teacher_ids


def teacher_to_student_lookup(student: TokenizerInfo, teacher: TokenizerInfo) -> Tensor:
    """[v_teacher] int64: the student id with the same piece, or -1 when not shared."""
    student_ids, teacher_ids = shared_vocab(student, teacher)
    lookup = torch.full((teacher.vocab_size,), -1, dtype=torch.long)
    lookup[teacher_ids] = student_ids
    return lookup
