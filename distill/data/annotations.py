"""Annotation files: SALMONN's training JSON and the field's test-file format.

SALMONN (bytedance/SALMONN `dataset.py`) reads
    {"annotation": [{"path", "text", "task", optional "Q", optional "expand_wav"}, ...]}
with "task" defaulting to "asr" and the path doubling as the item id. The field's
test file (nota-github/audiolm-evaluator) holds {"testset_id", "path", "task"} items,
as a list or under "annotation". Both read into the same `Item`. We also accept
"id", "references" (several reference captions), "duration" (seconds) and "stage"
(curriculum stage); other keys are kept in `Item.extra`.

Relative paths are resolved against the JSON file's folder, so a corpus can move.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from distill.data.prompts import DEFAULT_TASK, TASK_PROMPTS, prompt_for
from distill.errors import DistillError

_KNOWN_KEYS = {
    "path", "text", "task", "Q", "expand_wav", "id", "testset_id", "references", "duration", "stage",
}  # fmt: skip


class AnnotationError(DistillError, ValueError):
    """A malformed annotation file or entry; the message names file, index and field."""


@dataclass
class Item:
    """One annotated clip.

    Attributes:
        id: stable id: "id", else "testset_id", else the path as written (SALMONN's choice).
        path: absolute path of the audio file.
        text: target text (transcript or first caption); "" for unlabelled test items.
        task: task name, e.g. "asr", "audiocaption_v2".
        prompt: the instruction (the item's "Q" when given, else the task prompt).
        references: every reference text (several captions per clip); (text,) by default.
        duration: seconds, when the annotation states it (else None, read from the header).
        stage: curriculum stage (1, 2, ...) when the annotation states it.
        expand: SALMONN's "expand_wav" files appended after the main clip.
        extra: any other keys of the entry, kept for the caller.
    """

    id: str
    path: str
    text: str
    task: str
    prompt: str
    references: tuple[str, ...] = ()
    duration: float | None = None
    stage: int | None = None
    expand: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)

    def to_json(self, relative_to: str | os.PathLike | None = None) -> dict:
        """The entry as written to an annotation file (paths relative when asked)."""

        def rel(p: str) -> str:
            return os.path.relpath(p, relative_to) if relative_to is not None else p

        out = {"id": self.id, "path": rel(self.path), "text": self.text, "task": self.task}
        if self.prompt != TASK_PROMPTS.get(self.task):
            out["Q"] = self.prompt
        if self.references and tuple(self.references) != (self.text,):
            out["references"] = list(self.references)
        if self.duration is not None:
            out["duration"] = round(float(self.duration), 4)
        if self.stage is not None:
            out["stage"] = self.stage
        if self.expand:
            out["expand_wav"] = [rel(p) for p in self.expand]
        out.update(self.extra)
        return out


def _err(file: str, index: int, key: str, problem: str) -> AnnotationError:
    return AnnotationError(f"{file}: annotation[{index}].{key}: {problem}")


def _str_field(entry: dict, key: str, file: str, i: int, *, required: bool, default: str = ""):
    if key not in entry:
        if required:
            raise _err(file, i, key, "missing required field")
        return default
    value = entry[key]
    if not isinstance(value, str):
        raise _err(file, i, key, f"must be a string, got {type(value).__name__}")
    return value


def _parse_entry(entry: object, i: int, file: str, base: Path) -> Item:
    if not isinstance(entry, dict):
        raise AnnotationError(
            f"{file}: annotation[{i}] must be an object, got {type(entry).__name__}"
        )
    path = _str_field(entry, "path", file, i, required=True)
    if not path.strip():
        raise _err(file, i, "path", "is empty")
    text = _str_field(entry, "text", file, i, required=False)
    task = _str_field(entry, "task", file, i, required=False, default=DEFAULT_TASK)
    q = _str_field(entry, "Q", file, i, required=False)
    if not q and task not in TASK_PROMPTS:
        raise _err(
            file,
            i,
            "task",
            f"unknown task {task!r} and no 'Q' prompt; known: {sorted(TASK_PROMPTS)}",
        )
    item_id = entry.get("id", entry.get("testset_id", path))
    if not isinstance(item_id, (str, int)):
        raise _err(file, i, "id", f"must be a string, got {type(item_id).__name__}")
    refs = entry.get("references")
    if refs is None:
        refs = [text] if text else []
    elif not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
        raise _err(file, i, "references", "must be a list of strings")
    duration = entry.get("duration")
    if duration is not None and (not isinstance(duration, (int, float)) or duration < 0):
        raise _err(file, i, "duration", f"must be a non-negative number, got {duration!r}")
    stage = entry.get("stage")
    if stage is not None and (not isinstance(stage, int) or isinstance(stage, bool)):
        raise _err(file, i, "stage", f"must be an integer, got {stage!r}")
    expand = entry.get("expand_wav", [])
    if not isinstance(expand, list) or not all(isinstance(p, str) for p in expand):
        raise _err(file, i, "expand_wav", "must be a list of paths")
    return Item(
        id=str(item_id),
        path=os.path.normpath(base / path),  # an absolute `path` stays as it is
        text=text,
        task=task,
        prompt=prompt_for(task, q),
        references=tuple(refs),
        duration=None if duration is None else float(duration),
        stage=stage,
        expand=tuple(os.path.normpath(base / p) for p in expand),
        extra={k: v for k, v in entry.items() if k not in _KNOWN_KEYS},
    )


def read_annotations(path: str | os.PathLike, *, require_text: bool = False) -> list[Item]:
    """Read a SALMONN annotation file or a test file into items.

    Args:
        path: JSON file: {"annotation": [...]} or a bare list of entries.
        require_text: raise when an entry has no (or empty) "text" (training data).

    Returns:
        The items in file order, paths absolute.

    Raises:
        AnnotationError: bad JSON, wrong layout, a malformed entry or a duplicate id;
            the message names the file, the entry index and the field.
    """
    file = str(path)
    try:
        with open(file, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise AnnotationError(f"annotation file not found: {file}") from None
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{file}: not valid JSON: {e}") from e
    entries = data.get("annotation") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise AnnotationError(
            f'{file}: expected {{"annotation": [...]}} or a list of entries, got '
            f"{type(data).__name__}"
            + (f" with keys {sorted(data)}" if isinstance(data, dict) else "")
        )
    base = Path(file).resolve().parent
    items, seen = [], {}
    for i, entry in enumerate(entries):
        item = _parse_entry(entry, i, file, base)
        if require_text and not item.text.strip():
            raise _err(file, i, "text", "is missing or empty (required for training data)")
        if item.id in seen:
            raise _err(file, i, "id", f"duplicate id {item.id!r} (first at index {seen[item.id]})")
        seen[item.id] = i
        items.append(item)
    return items


def write_annotations(
    items: Iterable[Item], path: str | os.PathLike, *, relative: bool = True
) -> str:
    """Write items as a SALMONN annotation file; paths relative to its folder by default."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.resolve().parent if relative else None
    doc = {"annotation": [it.to_json(base) for it in items]}
    path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return str(path)


def write_testset(items: Iterable[Item], path: str | os.PathLike, *, relative: bool = True) -> str:
    """Write the field's test file: [{"testset_id", "path", "task"}] (no answers)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.resolve().parent
    rows = [
        {
            "testset_id": it.id,
            "path": os.path.relpath(it.path, base) if relative else it.path,
            "task": it.task,
        }
        for it in items
    ]
    path.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return str(path)
