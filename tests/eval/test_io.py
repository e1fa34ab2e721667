"""Test files, the submission CSV and id alignment."""

from __future__ import annotations

import json

import pytest

from distill.data.annotations import AnnotationError
from distill.eval.io import (
    IdMismatchError,
    align,
    read_jsonl,
    read_submission,
    read_test_items,
    submission_problems,
    write_jsonl,
    write_submission,
)

ROWS = [
    {"testset_id": "test0000", "path": "a.wav", "task": "asr"},
    {"testset_id": "test0001", "path": "b.wav", "task": "audiocaption_v2"},
]


@pytest.mark.parametrize("layout", ["list", "annotation"])
def test_read_test_file_both_layouts(tmp_path, layout):
    doc = ROWS if layout == "list" else {"annotation": ROWS}
    path = tmp_path / "test.json"
    path.write_text(json.dumps(doc))
    items = read_test_items(path)
    assert [(it.id, it.task) for it in items] == [
        ("test0000", "asr"),
        ("test0001", "audiocaption_v2"),
    ]
    assert items[0].path == str(tmp_path / "a.wav")  # relative to the test file's folder
    assert items[0].references == () and items[0].prompt.startswith("Recognize the speech")


def test_read_test_file_with_several_references(tmp_path):
    doc = [dict(ROWS[1], references=["a dog barks", "barking dog"]), dict(ROWS[0], text="hello")]
    path = tmp_path / "t.json"
    path.write_text(json.dumps(doc))
    items = read_test_items(path)
    assert items[0].references == ("a dog barks", "barking dog")
    assert items[1].references == ("hello",)


def test_read_test_file_errors_name_the_item(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"testset_id": "test0000", "task": "asr"}]))
    with pytest.raises(AnnotationError, match=r"annotation\[0\]\.path"):
        read_test_items(path)
    path.write_text(json.dumps([ROWS[0], ROWS[0]]))
    with pytest.raises(AnnotationError, match="duplicate id 'test0000'"):
        read_test_items(path)


def test_submission_round_trip_with_awkward_text(tmp_path):
    rows = [
        ("test0000", "plain text"),
        ("test0001", 'a "quoted", comma-separated phrase'),
        ("test0002", "two\nlines, and a trailing space "),
        ("test0003", "ünïcödé — 日本語"),
        ("test0004", ""),
    ]
    path = write_submission(tmp_path / "sub" / "predictions.csv", rows)
    assert path.read_text(encoding="utf-8").splitlines()[0] == "testset_id,text"
    assert read_submission(path) == rows
    assert submission_problems(rows) == ["empty text (read as NaN by pandas) for ids: ['test0004']"]


def test_submission_is_lowercased_as_the_evaluator_scores(tmp_path):
    rows = [("test0000", "A Dog BARKS."), ("test0001", "Über Café")]
    lower = read_submission(write_submission(tmp_path / "a.csv", rows))
    assert lower == [("test0000", "a dog barks."), ("test0001", "über café")]
    assert read_submission(write_submission(tmp_path / "b.csv", rows, lowercase=False)) == rows


def test_submission_header_must_be_exact(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("id,text\ntest0000,hi\n")
    with pytest.raises(ValueError, match="header must be exactly testset_id,text"):
        read_submission(path)
    path.write_text("testset_id,text,extra\n")
    with pytest.raises(ValueError, match="header must be exactly"):
        read_submission(path)


def test_submission_problems_flags_field_ids():
    assert submission_problems([("clip-7", "x")]) == ["ids not of the form testXXXX: ['clip-7']"]
    assert submission_problems([("test0042", "fine")]) == []


def test_align_reorders_and_names_mismatched_ids():
    ids, hyps, refs = align({"b": "B", "a": "A"}, {"a": ["ra"], "b": ["rb"]})
    assert (ids, hyps, refs) == (["a", "b"], ["A", "B"], [["ra"], ["rb"]])
    with pytest.raises(IdMismatchError, match=r"no prediction: \['c'\].*no reference: \['z'\]"):
        align({"a": "A", "z": "Z"}, {"a": ["ra"], "c": ["rc"]})


def test_jsonl_round_trip(tmp_path):
    records = [{"testset_id": "t", "text": "a\nb", "references": ["x", "ÿ"]}, {"n": 1}]
    assert read_jsonl(write_jsonl(tmp_path / "p.jsonl", records)) == records
