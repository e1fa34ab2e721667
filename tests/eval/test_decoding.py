"""`eval.decode`: presets, explicit overrides, the teacher's own settings, metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill._instantiate import ConfigError
from distill.modeling.generation import DECODE_PRESETS, DecodeSettings
from distill.recipe import Recipe

from .test_runner import ANSWERS, ScriptedModel

CONFIGS = Path(__file__).resolve().parents[2] / "recipes" / "configs"
STUDENT = {"_component_": "students.tiny"}  # never instantiated here


def recipe(eval_: dict, **extra) -> Recipe:
    return Recipe.from_dict({"student": STUDENT, "eval": eval_, **extra})


def test_greedy_by_default_and_salmonn_by_name():
    r = recipe({})
    assert r.eval.decode_settings() == DecodeSettings(num_beams=1, max_new_tokens=64, min_length=1)
    assert r.eval.decode_settings("teacher") == r.eval.decode_settings("student")
    s = recipe({"decode": "salmonn"}).eval
    assert s.decode_settings() == DECODE_PRESETS["salmonn"]
    assert (s.decode_settings().num_beams, s.decode_settings().top_p) == (4, 0.9)


def test_explicit_fields_override_the_preset_for_both_sides():
    e = recipe({"decode": "salmonn", "max_new_tokens": 12, "min_length": 0}).eval
    for role in ("student", "teacher"):
        got = e.decode_settings(role)
        assert (got.num_beams, got.max_new_tokens, got.min_length) == (4, 12, 0)
    e = Recipe.from_dict({"student": STUDENT}, overrides=["eval.decode=salmonn"]).eval
    assert e.decode_settings() == DECODE_PRESETS["salmonn"]


def test_teacher_decode_changes_the_teacher_only():
    e = recipe({"max_new_tokens": 12, "teacher_decode": {"num_beams": 2}}).eval
    assert (e.decode_settings().num_beams, e.decode_settings().max_new_tokens) == (1, 12)
    t = e.decode_settings("teacher")
    assert (t.num_beams, t.max_new_tokens, t.min_length) == (2, 12, 1)
    # a preset for the teacher, under the shared explicit fields
    e = recipe({"max_new_tokens": 12, "teacher_decode": {"decode": "salmonn"}}).eval
    t = e.decode_settings("teacher")
    assert (t.num_beams, t.max_new_tokens, t.top_p) == (4, 12, 0.9)


@pytest.mark.parametrize(
    ("eval_", "message"),
    [
        ({"decode": "beam"}, r"eval\.decode must be one of \['greedy', 'salmonn'\], got 'beam'"),
        ({"num_beams": 0}, r"eval\.num_beams must be >= 1, got 0"),
        ({"max_new_tokens": 2, "min_length": 3}, r"eval\.min_length must be in \[0, "),
        ({"teacher_decode": {"num_beems": 2}}, r"eval\.teacher_decode\.num_beems"),
        ({"teacher_decode": {"decode": "x"}}, r"eval\.teacher_decode\.decode must be one of"),
        ({"decod": "salmonn"}, r"unknown field\(s\) recipe\.eval\.decod"),
    ],
)
def test_bad_decode_settings_name_the_field(eval_, message):
    with pytest.raises(ConfigError, match=message):
        recipe(eval_)


def test_full_size_recipes_decode_as_salmonn_and_tiny_ones_greedy():
    for path in sorted(CONFIGS.glob("*.yaml")):
        got = Recipe.from_yaml(path).eval.decode_settings()
        if path.stem.endswith("_tiny"):
            assert got == DecodeSettings(max_new_tokens=12), path.name
        else:
            assert got == DECODE_PRESETS["salmonn"], path.name


def test_evaluate_one_records_each_sides_settings(tmp_path, test_set):
    from distill.engine.evaluate import evaluate_one

    r = recipe(
        {"decode": "salmonn", "efficiency": [], "teacher_decode": {"num_beams": 1}},
        data={"test": test_set},
        train={"progress": False},
    )
    for role, beams in (("student", 4), ("teacher", 1)):
        model = ScriptedModel(ANSWERS)
        evaluate_one(model, tmp_path / role, name=role, role=role, recipe=r)
        written = json.loads((tmp_path / role / "metrics.json").read_text())["decoding"]
        expected = {**DECODE_PRESETS["salmonn"].to_dict(), "num_beams": beams}
        assert written == {**expected, "batch_size": 8}
        assert all(call[1] == expected for call in model.calls)
