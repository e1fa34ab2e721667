"""One evaluation protocol for any AudioLLM: WER, CIDEr-D (SPICE/SPIDEr with Java), efficiency.

    from distill.eval import evaluate_model, read_test_items, word_error_rate, caption_metrics
    from distill.eval import measure_baseline, measure_strict

`distill eval` (distill/eval/cli.py) runs it from the command line and writes metrics.json,
predictions.csv (the field's submission format) and predictions.jsonl.
"""

from __future__ import annotations

from distill.eval.asr import normalize_for_wer, tokenize_13a, word_error_rate
from distill.eval.caption import caption_metrics, ptb_tokenize, spice_available
from distill.eval.efficiency import PROTOCOLS, measure_baseline, measure_strict, noise_batch
from distill.eval.io import (
    IdMismatchError,
    align,
    read_submission,
    read_test_items,
    submission_problems,
    write_submission,
)
from distill.eval.runner import evaluate_model, write_outputs

__all__ = [
    "PROTOCOLS",
    "IdMismatchError",
    "align",
    "caption_metrics",
    "evaluate_model",
    "measure_baseline",
    "measure_strict",
    "noise_batch",
    "normalize_for_wer",
    "ptb_tokenize",
    "read_submission",
    "read_test_items",
    "spice_available",
    "submission_problems",
    "tokenize_13a",
    "word_error_rate",
    "write_outputs",
    "write_submission",
]
