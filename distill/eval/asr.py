"""Corpus-level word error rate, the field's way.

The protocol is nota-github/audiolm-evaluator `metrics.py::compute_wer`:

1. Whisper's English normalizer (`whisper_normalizer.english.EnglishTextNormalizer`, which
   bundles the British-to-American spelling map and runs offline);
2. sacreBLEU's `13a` tokenization, then punctuation removal (a token made only of Unicode
   punctuation is dropped), then lowercasing, as the evaluator's `EvaluationTokenizer`;
3. word-level edit distance summed over the corpus, divided by the total reference words.

Step 2 is re-implemented here (`tokenize_13a`) so sacreBLEU is not a dependency; the rules are
the ones in sacrebleu/tokenizers/tokenizer_13a.py and tokenizer_re.py (checked equal to
sacreBLEU 2.5.1's `Tokenizer13a` on 200,000 random strings of letters, digits, punctuation,
symbols, newlines and HTML entities; tests pin golden cases). Step 3 uses jiwer 4's
`process_words`, whose summed S + D + I equals the evaluator's summed `editdistance.eval`.

Empty references. The evaluator keeps an utterance whose reference is empty: its hypothesis
words count as insertions and it adds 0 to the denominator. jiwer 3 raised on empty reference
strings; jiwer 4.0 accepts them and, when the whole corpus has 0 reference words, returns the
insertion count as "wer". We follow the evaluator for single empty references (and count them
in `empty_references`), and raise `ValueError` when the corpus has no reference words at all,
because WER is undefined there.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from functools import lru_cache

import jiwer

# ASCII characters that 13a always splits off: every ASCII punctuation or symbol except the
# apostrophe, comma, hyphen and period (sacreBLEU's ranges {-~ [-` space-& (-+ :-@ and /).
_13A_ALWAYS = re.compile(r"([!\"#$%&()*+/:;<=>?@\[\\\]^_`{|}~])")
_13A_PERIOD_COMMA_AFTER_NON_DIGIT = re.compile(r"([^0-9])([.,])")
_13A_PERIOD_COMMA_BEFORE_NON_DIGIT = re.compile(r"([.,])([^0-9])")
_13A_DASH_AFTER_DIGIT = re.compile(r"([0-9])(-)")


def tokenize_13a(line: str) -> str:
    """sacreBLEU `13a` tokenization (mteval-v13a), re-implemented.

    Splits ASCII punctuation and symbols except `'`; splits `.` and `,` unless they sit
    between digits; splits `-` after a digit; unescapes a few HTML entities.

    Example: `tokenize_13a("Hi, it's $3.50-ish.") == "Hi , it's $ 3.50 - ish ."`
    """
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    for entity, char in (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">")):
        line = line.replace(entity, char)
    line = f" {line} "
    line = _13A_ALWAYS.sub(r" \1 ", line)
    line = _13A_PERIOD_COMMA_AFTER_NON_DIGIT.sub(r"\1 \2 ", line)
    line = _13A_PERIOD_COMMA_BEFORE_NON_DIGIT.sub(r" \1 \2", line)
    line = _13A_DASH_AFTER_DIGIT.sub(r"\1 \2 ", line)
    return " ".join(line.split())


def _is_punctuation_token(token: str) -> bool:
    return all(unicodedata.category(c).startswith("P") for c in token)


# rewrites the `whisper-normalizer` package adds to OpenAI Whisper's English normalizer, which
# the field's evaluator (NOTA's audiolm-evaluator) copies without them: "kinda" -> "kind of",
# "sorta" -> "sort of", "dunno" -> "do not know", "cause" -> "because". Dropped here so that
# WER is the evaluator's.
NOT_IN_EVALUATOR = (r"\bkinda\b", r"\bsorta\b", r"\bdunno\b", r"\bcause\b")


@lru_cache(maxsize=1)
def _normalizer():
    from whisper_normalizer.english import EnglishTextNormalizer

    normalizer = EnglishTextNormalizer()
    normalizer.replacers = {
        k: v for k, v in normalizer.replacers.items() if k not in NOT_IN_EVALUATOR
    }
    return normalizer


def normalize_for_wer(text: str) -> list[str]:
    """Whisper English normalizer, 13a tokenization, punctuation removal, lowercase -> words.

    Currency symbols survive as words (`"$3.50"` -> `["$", "3.50"]`), as in the field.
    """
    normalized = _normalizer()(text)
    tokens = tokenize_13a(normalized).split(" ")
    return [t.lower() for t in tokens if t and not _is_punctuation_token(t)]


def word_error_rate(
    hypotheses: Sequence[str],
    references: Sequence[str],
    ids: Sequence[str] | None = None,
    *,
    worst: int = 10,
) -> dict:
    """Corpus-level WER with S/D/I counts, per-utterance error counts and the worst utterances.

    Args:
        hypotheses: b model outputs.
        references: b reference transcripts (same order).
        ids: b item ids for the per-utterance report; defaults to positions.
        worst: how many worst utterances to list (most errors first).

    Returns:
        {"metric": "wer", "wer": float (fraction; > 1 possible), "wer_percent",
        "substitutions", "deletions", "insertions", "hits", "reference_words",
        "hypothesis_words", "utterances", "empty_references", "empty_hypotheses",
        "worst": [{"id", "errors", "reference_words", "wer", "reference", "hypothesis",
        "reference_normalized", "hypothesis_normalized"}],
        "per_item": {id: {"errors", "reference_words"}} (their sums give the corpus WER;
        what `distill.stats.paired_bootstrap` resamples), "protocol": str}

    Raises:
        ValueError: if lengths differ, the corpus is empty, or it has no reference words.
    """
    if len(hypotheses) != len(references):
        raise ValueError(
            f"WER: {len(hypotheses)} hypotheses but {len(references)} references; they must pair up"
        )
    if not references:
        raise ValueError("WER: no utterances to score")
    ids = [str(i) for i in range(len(references))] if ids is None else [str(i) for i in ids]
    ref_words = [normalize_for_wer(r) for r in references]
    hyp_words = [normalize_for_wer(h) for h in hypotheses]
    total_ref = sum(len(w) for w in ref_words)
    if total_ref == 0:
        raise ValueError(
            f"WER is undefined: all {len(references)} references are empty after Whisper "
            "normalization (0 reference words)"
        )
    out = jiwer.process_words([" ".join(w) for w in ref_words], [" ".join(w) for w in hyp_words])
    s, d, i, h = out.substitutions, out.deletions, out.insertions, out.hits
    per_utt = []
    for k, chunks in enumerate(out.alignments):
        errors = 0
        for c in chunks:
            if c.type in ("substitute", "delete"):
                errors += c.ref_end_idx - c.ref_start_idx
            elif c.type == "insert":
                errors += c.hyp_end_idx - c.hyp_start_idx
        n_ref = len(ref_words[k])
        per_utt.append(
            {
                "id": ids[k],
                "errors": errors,
                "reference_words": n_ref,
                "wer": errors / n_ref if n_ref else float(errors > 0),
                "reference": references[k],
                "hypothesis": hypotheses[k],
                "reference_normalized": " ".join(ref_words[k]),
                "hypothesis_normalized": " ".join(hyp_words[k]),
            }
        )
    ranked = sorted(per_utt, key=lambda u: (-u["errors"], -u["wer"], u["id"]))
    wer = (s + d + i) / total_ref
    return {
        "metric": "wer",
        "wer": wer,
        "wer_percent": 100.0 * wer,
        "substitutions": s,
        "deletions": d,
        "insertions": i,
        "hits": h,
        "reference_words": total_ref,
        "hypothesis_words": sum(len(w) for w in hyp_words),
        "utterances": len(references),
        "empty_references": sum(1 for w in ref_words if not w),
        "empty_hypotheses": sum(1 for w in hyp_words if not w),
        "worst": [u for u in ranked[:worst] if u["errors"] > 0],
        "per_item": {
            u["id"]: {"errors": u["errors"], "reference_words": u["reference_words"]}
            for u in per_utt
        },
        "protocol": "corpus WER = (S+D+I)/reference words after whisper EnglishTextNormalizer, "
        "13a tokenization, punctuation removal, lowercase (audiolm-evaluator compute_wer)",
    }
