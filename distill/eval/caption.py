"""Audio-captioning metrics: CIDEr-D always; SPICE and SPIDEr when Java tools are present.

CIDEr-D is computed by aac-metrics 0.5.4 (`aac_metrics.functional.cider_d`, pure Python). Its
default preprocessing runs the Stanford PTB tokenizer in Java, which needs a download; we
tokenize in Python instead (`ptb_tokenize`: lowercase, PTB-style splitting of punctuation and
clitics, then aac-metrics' own `PTB_PUNCTUATIONS` removed), which is what `preprocess=False`
with pre-tokenized sentences means in `aac_metrics.evaluate`.

SPICE needs Java plus the SPICE jar and its Stanford CoreNLP libraries in aac-metrics' cache
dir (`aac-metrics-download`). When they are installed, `spice` and `spider` = (CIDEr-D + SPICE)
/ 2 are added; otherwise the result says why they are missing. Every number carries its metric
name: the field's evaluator printed CIDEr-D x 100 under the label "SPIDEr"; that number is
reported here too, as `field_cider_d_x100`, and is never called SPIDEr.
"""

from __future__ import annotations

import functools
import logging
import re
import shutil
from collections.abc import Sequence

log = logging.getLogger(__name__)

# PTB clitics split off the preceding word ("don't" -> "do n't", "dog's" -> "dog 's").
_CLITICS = re.compile(r"(?i)(\w)(n't|'s|'re|'ve|'m|'ll|'d)\b")
_SPECIAL = {"cannot": "can not", "gonna": "gon na", "gotta": "got ta", "wanna": "wan na"}
# Punctuation split off words; "." and "," stay inside numbers (3.5, 1,000), "-" inside words.
_SPLIT = re.compile(r"([!?;:\"()\[\]{}<>`]|\.\.\.|--)")
_PERIOD_COMMA = re.compile(r"(?<![0-9])([.,])|([.,])(?![0-9])")
_EDGE_DASH = re.compile(r"(^|\s)-+|-+(\s|$)")
_BRACKETS = {"(": "-LRB-", ")": "-RRB-", "{": "-LCB-", "}": "-RCB-", "[": "-LSB-", "]": "-RSB-"}


@functools.lru_cache(maxsize=1)
def _ptb_punctuations() -> frozenset[str]:
    from aac_metrics.utils.tokenization import PTB_PUNCTUATIONS

    return frozenset(PTB_PUNCTUATIONS) | {'"', "-LSB-", "-RSB-"}


def ptb_tokenize(sentence: str) -> list[str]:
    """Python approximation of aac-metrics' PTB preprocessing (no Java).

    Lowercases, splits punctuation and clitics as Stanford's PTBTokenizer does, then drops
    the tokens aac-metrics removes (`PTB_PUNCTUATIONS`). Hyphenated words and decimals stay.

    Example: `ptb_tokenize("A dog's barking, then (loud) rain...")`
    -> `["a", "dog", "'s", "barking", "then", "loud", "rain"]`.
    """
    s = " ".join(sentence.lower().split())
    for word, split in _SPECIAL.items():
        s = re.sub(rf"\b{word}\b", split, s)
    s = _CLITICS.sub(r"\1 \2", s)
    s = _SPLIT.sub(r" \1 ", s)
    s = _PERIOD_COMMA.sub(lambda m: f" {m.group(1) or m.group(2)} ", s)
    s = _EDGE_DASH.sub(r" - ", s)
    # A leading or trailing quote is punctuation, an inner one ("rock'n'roll") is not.
    s = re.sub(r"(^|\s)'+(?!(?:s|re|ve|m|ll|d)\b)|'+(\s|$)", r" ' ", s)
    drop = _ptb_punctuations()
    tokens = [_BRACKETS.get(t, t) for t in s.split()]
    return [t for t in tokens if t not in drop]


def spice_available() -> tuple[bool, str]:
    """Whether aac-metrics can run SPICE here: Java on PATH and the SPICE jar + libs in its cache."""
    java = shutil.which("java")
    if java is None:
        return False, "SPICE/SPIDEr skipped: no `java` executable on PATH"
    try:
        from aac_metrics.functional.spice import check_spice_install
        from aac_metrics.utils.globals import _get_cache_path

        check_spice_install(_get_cache_path())
    except (FileNotFoundError, ImportError) as err:
        return False, f"SPICE/SPIDEr skipped: aac-metrics Java tools not installed ({err})"
    return True, "SPICE available"


def _join(tokens: list[str]) -> str:
    return " ".join(tokens)


def _spice_scores(candidates: list[str], mult_references: list[list[str]]) -> tuple[float, list]:
    """Run aac-metrics SPICE on pre-tokenized sentences; (corpus, per-item)."""
    from aac_metrics.functional.spice import spice

    corpus, sents = spice(candidates, mult_references, return_all_scores=True)
    return float(corpus["spice"]), [float(x) for x in sents["spice"]]


def caption_metrics(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    ids: Sequence[str] | None = None,
    *,
    use_spice: bool | None = None,
    worst: int = 10,
) -> dict:
    """CIDEr-D (and SPICE, SPIDEr when available) for a captioning test set.

    Args:
        hypotheses: b generated captions.
        references: b lists of reference captions (one or more per clip).
        ids: b item ids for the per-clip report.
        use_spice: None = auto-detect Java tools; False = skip; True = require them.
        worst: how many lowest-scoring clips to list.

    Returns:
        {"metrics": ["cider_d", ...], "cider_d": float | None, "spice", "spider" (when run),
        "field_cider_d_x100": the audiolm-evaluator number (CIDEr-D x 100, untokenized,
        first reference only, printed there as "SPIDEr"), "clips", "references_per_clip",
        "notes": [str], "worst": [...], "tokenization": str,
        "per_item": {id: {"cider_d"[, "spice", "spider"]}}} (per-clip scores, whose mean is
        the corpus value; what `distill.stats.paired_bootstrap` resamples).
        With fewer than 2 clips CIDEr-D is undefined: its value is None, `per_item` is empty
        and `notes` says why.
    """
    from aac_metrics.functional.cider_d import cider_d

    if len(hypotheses) != len(references):
        raise ValueError(
            f"captioning: {len(hypotheses)} hypotheses but {len(references)} reference lists"
        )
    empty = [i for i, refs in enumerate(references) if not refs]
    if empty:
        raise ValueError(f"captioning: no reference caption for items {empty[:10]}")
    ids = [str(i) for i in range(len(hypotheses))] if ids is None else [str(i) for i in ids]
    cands = [_join(ptb_tokenize(h)) for h in hypotheses]
    mrefs = [[_join(ptb_tokenize(r)) for r in refs] for refs in references]
    n_refs = sorted({len(r) for r in references})
    result: dict = {
        "metrics": ["cider_d"],
        "cider_d": None,
        "field_cider_d_x100": None,
        "clips": len(cands),
        "references_per_clip": n_refs[0] if len(n_refs) == 1 else n_refs,
        "tokenization": "python PTB-like (distill.eval.caption.ptb_tokenize), preprocess=False",
        "notes": [],
        "worst": [],
        "per_item": {},
    }
    if len(cands) < 2:
        msg = (
            f"CIDEr-D needs at least 2 candidates (its IDF is computed over the test set); "
            f"got {len(cands)}, so cider_d is not reported"
        )
        log.warning(msg)
        result["notes"].append(msg)
        return result
    corpus, sents = cider_d(cands, mrefs, return_all_scores=True)
    result["cider_d"] = float(corpus["cider_d"])
    per_clip = {"cider_d": [float(x) for x in sents["cider_d"]]}
    field = cider_d([h.lower() for h in hypotheses], [[r[0]] for r in references])
    result["field_cider_d_x100"] = 100.0 * float(field[0]["cider_d"])
    ok, why = spice_available() if use_spice is not False else (False, "SPICE disabled")
    if use_spice and not ok:
        raise RuntimeError(why)
    if ok:
        spice_corpus, spice_sents = _spice_scores(cands, mrefs)
        result["spice"] = spice_corpus
        result["spider"] = (result["cider_d"] + spice_corpus) / 2.0
        result["metrics"] += ["spice", "spider"]
        per_clip["spice"] = spice_sents
        per_clip["spider"] = [(c + p) / 2.0 for c, p in zip(per_clip["cider_d"], spice_sents)]
    else:
        result["notes"].append(why)
    order = sorted(range(len(cands)), key=lambda k: (per_clip["cider_d"][k], ids[k]))
    result["worst"] = [
        {
            "id": ids[k],
            **{name: scores[k] for name, scores in per_clip.items()},
            "hypothesis": hypotheses[k],
            "references": list(references[k]),
        }
        for k in order[:worst]
    ]
    result["per_item"] = {
        ids[k]: {name: scores[k] for name, scores in per_clip.items()} for k in range(len(cands))
    }
    return result
