"""`python -m distill`, and user errors as one `distill: error:` line with status 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill.cli import error_line, main

ROOT = Path(__file__).resolve().parents[1]


def _python_m(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "distill", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


def test_python_m_distill_help():
    done = _python_m("--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: distill") and "--debug" in done.stdout


def test_a_missing_config_is_one_line_and_status_2_in_a_subprocess(tmp_path):
    done = _python_m("train", "--config", str(tmp_path / "nope.yaml"))
    assert done.returncode == 2
    assert done.stderr == f"distill: error: recipe config {tmp_path / 'nope.yaml'} does not exist\n"


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_a_bad_config_value_names_file_field_and_value(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("student: {_component_: distill.presets.build_model}\noptim: {lr: fast}\n")
    assert main(["train", "--config", str(path)]) == 2
    assert _one_line(capsys) == (
        f"distill: error: {path}: recipe.optim.lr must be float, got 'fast' (str)\n"
    )


def test_invalid_yaml_is_folded_onto_one_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("optim: {lr: [1\n")
    assert main(["train", "--config", str(path)]) == 2
    assert _one_line(capsys).startswith(f"distill: error: {path}: invalid YAML: ")


def test_a_truncated_checkpoint_is_one_line(tmp_path, capsys):
    from distill.presets import build_model

    model_dir = tmp_path / "model"
    build_model("tiny-student", seed=0).save_pretrained(model_dir)
    weights = model_dir / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: size - 10])
    out = str(tmp_path / "out")
    assert main(["eval", "--model", str(model_dir), "--out", out, "--device", "cpu"]) == 2
    assert _one_line(capsys) == (
        f"distill: error: cannot read AudioLLM weights {weights}: truncated: {size - 10} bytes, "
        f"the header describes {size}\n"
    )


def test_systemexit_with_a_message_is_a_user_error(tmp_path, capsys):
    assert main(["eval", "--random-init", "tiny-student", "--out", str(tmp_path)]) == 2
    assert (
        _one_line(capsys)
        == "distill: error: --random-init measures efficiency only: pass --efficiency\n"
    )


def test_debug_shows_the_traceback(tmp_path, capsys):
    assert main(["--debug", "train", "--config", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert err.rstrip().endswith(
        f"FileNotFoundError: recipe config {tmp_path / 'nope.yaml'} does not exist"
    )
    assert "distill: error:" not in err


def test_a_programming_error_keeps_its_traceback(monkeypatch):
    import distill.recipe

    def broken(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(distill.recipe, "run", broken)
    with pytest.raises(ZeroDivisionError, match="a bug"):
        main(["train", "--config", "x.yaml"])


def test_error_lines():
    from distill.data.prompts import UnknownTaskError
    from distill.modeling.checkpoint import read_tensors

    try:
        open("/nonexistent/dir/f.yaml")  # noqa: SIM115 - the error is the point
    except FileNotFoundError as err:
        assert error_line(err) == "No such file or directory: /nonexistent/dir/f.yaml"
    assert error_line(KeyError("no prompt for task 'x'")) == "no prompt for task 'x'"
    assert error_line(UnknownTaskError("task 'x'")) == "task 'x'"
    assert error_line(ValueError("a\n  b\n")) == "a b"
    with pytest.raises(FileNotFoundError) as err:
        read_tensors("/nonexistent/w.pt")
    assert error_line(err.value) == "checkpoint not found: /nonexistent/w.pt"


def _user_errors():
    from distill.cache import CacheError
    from distill.data.annotations import AnnotationError
    from distill.data.audio import AudioError
    from distill.data.dataset import DataError
    from distill.eval.io import IdMismatchError
    from distill.modeling.audio_encoder import CheckpointError as EncoderCheckpointError
    from distill.modeling.checkpoint import CheckpointError
    from distill.stats import MissingItemScores
    from losses._reduce import LossInputError

    assert EncoderCheckpointError is CheckpointError  # one class, caught as before
    return [
        AudioError("cannot decode clip.wav: not a sound file"),
        AnnotationError("train.json: item 3 has no 'path'"),
        DataError("12 of 40 items are unreadable"),
        CacheError("id 'x' is not in the teacher cache c"),
        IdMismatchError("predictions lack ids a, b"),
        MissingItemScores("run/predictions.jsonl has no per-item scores"),
        LossInputError("TokenKL: vocab 10 vs 12"),
        CheckpointError("cannot read checkpoint w.pt: truncated"),
        PermissionError("cannot write out/: permission denied"),
    ]


@pytest.mark.parametrize("error", _user_errors(), ids=lambda e: type(e).__name__)
def test_each_user_error_is_one_line(error, monkeypatch, capsys):
    import distill.recipe

    def fails(args):
        raise error

    monkeypatch.setattr(distill.recipe, "run", fails)
    assert main(["train", "--config", "x.yaml"]) == 2
    assert _one_line(capsys) == f"distill: error: {error}\n"
