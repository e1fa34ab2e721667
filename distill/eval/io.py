"""Test files, submission CSVs and prediction files.

Test file (the field's format): a JSON list, or SALMONN's `{"annotation": [...]}`, of
`{"testset_id": "test0000", "path": "...", "task": "asr" | "audiocaption_v2"}`, optionally
with references (`"text"`, or `"references"`: several captions per clip). It is read by
`distill.data.annotations.read_annotations`, the same reader as training annotations.

Submission (the field's format): a CSV with exactly the columns `testset_id,text`, written with
the csv module so commas, quotes and newlines inside `text` round-trip. Texts are lowercased
by default, as NOTA's evaluator does before scoring (`lowercase=False` keeps the case).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from distill.data.annotations import Item, read_annotations
from distill.errors import DistillError

SUBMISSION_COLUMNS = ("testset_id", "text")
_FIELD_ID = re.compile(r"^test\d{4}$")


class IdMismatchError(DistillError, ValueError):
    """Predictions and references do not cover the same ids."""


def read_test_items(path: str | Path) -> list[Item]:
    """Read a test file (JSON list or {"annotation": [...]}) into `distill.data.Item`s.

    One reader serves training annotations and test files (`distill.data.annotations`):
    ids come from "id", else "testset_id", else the path; references from "references",
    else "text"; relative paths resolve against the file's folder.

    Raises:
        AnnotationError: naming the file, item index and field, for a malformed file,
            a missing `path`, an unknown task or a duplicate id.
    """
    return read_annotations(path)


def write_submission(
    path: str | Path, predictions: Iterable[tuple[str, str]], *, lowercase: bool = True
) -> Path:
    """Write `(testset_id, text)` pairs as the field's submission CSV (`testset_id,text`).

    `lowercase` (default, as the field's evaluator does) writes each text lowercased.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_MINIMAL)
        writer.writerow(SUBMISSION_COLUMNS)
        for tid, text in predictions:
            writer.writerow([tid, text.lower() if lowercase else text])
    return path


def read_submission(path: str | Path) -> list[tuple[str, str]]:
    """Read a submission CSV; the header must be exactly `testset_id,text`."""
    path = Path(path)
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(header) != SUBMISSION_COLUMNS:
            raise ValueError(
                f"{path}: header must be exactly {','.join(SUBMISSION_COLUMNS)}, got {header}"
            )
        rows = []
        for line_no, row in enumerate(reader, start=2):
            if len(row) != 2:
                raise ValueError(f"{path} row {line_no}: expected 2 columns, got {len(row)}")
            rows.append((row[0], row[1]))
    return rows


def submission_problems(rows: Sequence[tuple[str, str]]) -> list[str]:
    """What the field's submission validator would reject (ids not `testXXXX`; empty text,
    which pandas reads back as NaN, not a string)."""
    problems = []
    bad_ids = [tid for tid, _ in rows if not _FIELD_ID.match(tid)]
    if bad_ids:
        problems.append(f"ids not of the form testXXXX: {bad_ids[:5]}")
    empty = [tid for tid, text in rows if not text.strip()]
    if empty:
        problems.append(f"empty text (read as NaN by pandas) for ids: {empty[:5]}")
    return problems


def write_jsonl(path: str | Path, records: Iterable[Mapping]) -> Path:
    """One JSON object per line (UTF-8, non-ASCII kept)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSON-lines file, skipping blank lines; errors name the line."""
    path = Path(path)
    out = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} line {line_no}: not valid JSON ({err})") from err
    return out


def align(
    predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]
) -> tuple[list[str], list[str], list[list[str]]]:
    """Pair predictions with references by id, in reference order.

    Returns:
        (ids, hypotheses, reference lists).

    Raises:
        IdMismatchError: naming the ids present on one side only.
    """
    missing = [i for i in references if i not in predictions]
    extra = [i for i in predictions if i not in references]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} ids have no prediction: {missing[:10]}")
        if extra:
            parts.append(f"{len(extra)} predictions have no reference: {extra[:10]}")
        raise IdMismatchError("predictions and references do not match; " + "; ".join(parts))
    ids = list(references)
    return ids, [predictions[i] for i in ids], [list(references[i]) for i in ids]
