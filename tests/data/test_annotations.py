from __future__ import annotations

import os

import pytest

from distill.data.annotations import (
    AnnotationError,
    Item,
    read_annotations,
    write_annotations,
    write_testset,
)
from distill.data.prompts import TASK_PROMPTS, UnknownTaskError, prompt_for

from .conftest import write_json


def test_task_prompts_match_salmonn_exactly():
    assert TASK_PROMPTS["asr"] == "Recognize the speech and give me the transcription."
    assert TASK_PROMPTS["audiocaption"] == "Please describe the audio."
    assert TASK_PROMPTS["audiocaption_v2"] == "Please write down what your hear in the audio."
    assert prompt_for("asr", "Say it again.") == "Say it again."
    assert prompt_for("asr", "") == TASK_PROMPTS["asr"]
    with pytest.raises(UnknownTaskError, match="'qa'"):
        prompt_for("qa")


def test_reads_salmonn_format_with_relative_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    doc = {
        "annotation": [
            {"path": "sub/a.wav", "text": "hello", "task": "asr"},
            {"path": "/abs/b.wav", "text": "a dog", "task": "audiocaption_v2", "id": "b",
             "references": ["a dog", "a dog barks"], "duration": 2.5, "stage": 2, "speaker": "x"},
            {"path": "c.wav", "text": "why", "task": "qa", "Q": "What is said?", "expand_wav": ["d.wav"]},
            {"path": "e.wav", "text": "no task"},
        ]
    }  # fmt: skip
    items = read_annotations(write_json(tmp_path / "ann.json", doc))
    a, b, c, e = items
    assert a.path == str(tmp_path / "sub" / "a.wav") and a.id == "sub/a.wav"
    assert a.prompt == TASK_PROMPTS["asr"] and a.references == ("hello",)
    assert b.path == "/abs/b.wav" and b.id == "b" and b.references == ("a dog", "a dog barks")
    assert (b.duration, b.stage, b.extra) == (2.5, 2, {"speaker": "x"})
    assert c.prompt == "What is said?" and c.expand == (str(tmp_path / "d.wav"),)
    assert e.task == "asr"  # SALMONN's default


def test_reads_testset_format(tmp_path):
    rows = [{"testset_id": "test0000", "path": "x.wav", "task": "asr"},
            {"testset_id": "test0001", "path": "y.wav", "task": "audiocaption_v2"}]  # fmt: skip
    for doc in (rows, {"annotation": rows}):
        items = read_annotations(write_json(tmp_path / "t.json", doc))
        assert [it.id for it in items] == ["test0000", "test0001"]
        assert [it.text for it in items] == ["", ""] and items[1].prompt == TASK_PROMPTS[
            "audiocaption_v2"
        ]


@pytest.mark.parametrize(
    "entry, pattern",
    [
        ({"text": "hi"}, r"annotation\[1\]\.path: missing required field"),
        ({"path": 3, "text": "hi"}, r"annotation\[1\]\.path: must be a string"),
        ({"path": "x.wav", "text": ["hi"]}, r"annotation\[1\]\.text: must be a string"),
        ({"path": "x.wav", "task": "dance"}, r"annotation\[1\]\.task: unknown task 'dance'"),
        ({"path": "x.wav", "references": "a"}, r"annotation\[1\]\.references"),
        ({"path": "x.wav", "duration": -1}, r"annotation\[1\]\.duration"),
        ({"path": "x.wav", "stage": "one"}, r"annotation\[1\]\.stage"),
        (
            {"path": "ok.wav", "text": "dup"},
            r"annotation\[1\]\.id: duplicate id 'ok.wav' \(first at index 0\)",
        ),
        ("just a string", r"annotation\[1\] must be an object"),
    ],
)
def test_malformed_entries_name_file_index_and_field(tmp_path, entry, pattern):
    path = write_json(
        tmp_path / "bad.json", {"annotation": [{"path": "ok.wav", "text": "fine"}, entry]}
    )
    with pytest.raises(AnnotationError, match=pattern) as info:
        read_annotations(path)
    assert "bad.json" in str(info.value)


def test_file_level_errors(tmp_path):
    with pytest.raises(AnnotationError, match="not found: .*nope.json"):
        read_annotations(tmp_path / "nope.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(AnnotationError, match="broken.json: not valid JSON"):
        read_annotations(tmp_path / "broken.json")
    with pytest.raises(AnnotationError, match=r"wrap.json: expected .* keys \['data'\]"):
        read_annotations(write_json(tmp_path / "wrap.json", {"data": []}))
    path = write_json(tmp_path / "train.json", {"annotation": [{"path": "x.wav", "text": " "}]})
    with pytest.raises(AnnotationError, match=r"annotation\[0\]\.text: is missing or empty"):
        read_annotations(path, require_text=True)


def test_write_then_read_round_trips(tmp_path):
    items = [
        Item("a", str(tmp_path / "audio" / "a.flac"), "one two", "asr", TASK_PROMPTS["asr"], ("one two",), 1.25, 1),
        Item("b", str(tmp_path / "audio" / "b.flac"), "A beep.", "audiocaption_v2", "Custom?",
             ("A beep.", "One beep."), None, None, extra={"voice": "en"}),
    ]  # fmt: skip
    path = write_annotations(items, tmp_path / "out" / "ann.json")
    back = read_annotations(path)
    assert back == items
    raw = open(path).read()
    assert '"path": "../audio/a.flac"' in raw and '"Q": "Custom?"' in raw
    test = read_annotations(write_testset(items, tmp_path / "testset.json"))
    assert [(t.id, t.path, t.task, t.text) for t in test] == [
        (i.id, i.path, i.task, "") for i in items
    ]
    assert os.path.isabs(test[0].path)
