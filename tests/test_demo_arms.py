"""Every named demo arm builds into real loss modules with the widths it was given."""

import pytest
import torch

from distill._instantiate import instantiate
from distill.demo.arms import ARMS, BASELINE, BEST, STUDY_ARMS, arm


@pytest.mark.parametrize("name", ARMS)
def test_every_arm_builds_its_loss(name):
    a = arm(name, student_q=24, teacher_q=40, speech=(16, 32))
    loss = instantiate(a.loss, config_key="loss")
    assert isinstance(loss, torch.nn.Module)
    assert a.pseudo_labels == (name != BASELINE)
    # only the baseline and plain sequence-level KD (pseudo-labels, CE; over an inherited
    # Q-Former or not) need no live teacher
    assert a.teacher == (name not in (BASELINE, "seqkd", "seqkd_inherit"))
    assert a.inherit == name.startswith("seqkd_inherit")
    # the feature terms' projections are sized from the widths passed in
    for module in loss.modules():
        if isinstance(module, torch.nn.Linear):
            assert {module.in_features, module.out_features} <= {16, 24, 32, 40}


def test_best_and_baseline_are_study_arms_and_unknown_names_are_refused():
    assert BASELINE in STUDY_ARMS and BEST in STUDY_ARMS and set(STUDY_ARMS) <= set(ARMS)
    with pytest.raises(ValueError, match="unknown arm 'nope'.*ce_only"):
        arm("nope", student_q=24, teacher_q=40, speech=(16, 32))


def test_an_inheriting_arm_needs_a_student_qformer_as_wide_as_the_teachers(tmp_path, monkeypatch):
    from distill._instantiate import ConfigError
    from distill.demo.config import DemoConfig
    from distill.demo.world import World, student_recipe

    cfg = DemoConfig(out_dir=str(tmp_path), student_qformer=64, teacher_qformer=128)
    found = {"student_lm": "s", "teacher_lm": "t", "speech_encoder": "w", "audio_encoder": "a"}
    world = World(cfg, {"labelled": "l.json"}, found, tmp_path / "teacher", None)
    import distill.demo.world as w

    def widths_only(cfg, found, role):  # no foundation on disk: the check needs widths only
        return {"qformer_hidden": cfg.teacher_qformer if role == "teacher" else cfg.student_qformer}

    monkeypatch.setattr(w, "audio_llm_config", widths_only)
    with pytest.raises(ConfigError, match=r"student_qformer = teacher_qformer \(128\), got 64"):
        student_recipe(world, "seqkd_inherit", 0)


def test_an_out_dir_built_with_other_settings_is_refused_before_anything_is_reused(tmp_path):
    import json
    from dataclasses import replace

    from distill._instantiate import ConfigError
    from distill.demo.config import DemoConfig
    from distill.demo.world import SETTINGS_FILE, check_settings

    cfg = DemoConfig.quick(out_dir=str(tmp_path / "out"), progress=False)
    check_settings(cfg)  # the first run stamps the directory
    stamp = tmp_path / "out" / SETTINGS_FILE
    stored = json.loads(stamp.read_text())
    assert stored["student_steps"] == cfg.student_steps and "out_dir" not in stored
    # what the numbers do not depend on, or what has directories of its own, may change
    check_settings(replace(cfg, progress=True, jobs=1, student_seeds=(0, 1, 2),
                           student_label_fraction=1.0))  # fmt: skip
    with pytest.raises(ConfigError) as err:
        check_settings(replace(cfg, student_steps=cfg.student_steps + 1, teacher_processes=1))
    message = str(err.value)
    assert str(stamp) in message and "--fresh" in message
    assert f"student_steps: {cfg.student_steps} -> {cfg.student_steps + 1}" in message
    assert "teacher_processes: 2 -> 1" in message
    with pytest.raises(ConfigError, match="n_speech"):
        check_settings(DemoConfig(out_dir=str(tmp_path / "out")))  # full-size over --quick
    assert json.loads(stamp.read_text()) == stored  # a refused run changes nothing
