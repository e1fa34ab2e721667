"""evaluate_model, write_outputs and `distill eval` end to end on tiny inputs."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from distill.cli import main as distill_main
from distill.eval.io import IdMismatchError, read_submission, read_test_items
from distill.eval.runner import evaluate_model, write_outputs


class ScriptedModel(nn.Module):
    """Returns fixed texts by item id, so the scores are known exactly."""

    def __init__(self, answers: dict[str, str]):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(3))
        self.answers = answers
        self.calls = []

    def generate(self, batch, **decode):
        self.calls.append((list(batch.ids), decode, batch.waveforms.shape))
        return [self.answers[i] for i in batch.ids]


ANSWERS = {
    "test0000": "hello word",  # 1 substitution of 2 ref words
    "test0001": "the color gray",  # British spellings normalized: 0 errors of 3
    "test0002": "a dog barks",
    "test0003": "rain falls on a roof",
}


def test_evaluate_model_scores_each_task(test_set):
    model = ScriptedModel(ANSWERS)
    items = read_test_items(test_set)
    out = evaluate_model(model, items, num_beams=2, max_new_tokens=7, batch_size=3, progress=False)
    asr = out["accuracy"]["asr"]
    assert asr["metric"] == "wer" and asr["wer"] == pytest.approx(1 / 5)
    assert asr["substitutions"] == 1 and asr["worst"][0]["id"] == "test0000"
    cap = out["accuracy"]["audiocaption_v2"]
    assert cap["metrics"] == ["cider_d"] and cap["cider_d"] > 0
    assert cap["references_per_clip"] == 2
    # the salmonn preset (the default) with the two overrides, every setting recorded
    decode = {"num_beams": 2, "max_new_tokens": 7, "min_length": 1, "repetition_penalty": 1.0,
              "length_penalty": 1.0, "do_sample": False, "temperature": 1.0, "top_p": 0.9}  # fmt: skip
    assert out["decoding"] == {**decode, "batch_size": 3}
    assert [c[0] for c in model.calls] == [["test0000", "test0001", "test0002"], ["test0003"]]
    assert all(c[1] == decode for c in model.calls)
    assert out["throughput"]["audio_seconds"] == pytest.approx((16000 * 4 + 4000 * 6) / 16000)
    assert out["throughput"]["rtfx"] > 0
    assert [p["text"] for p in out["predictions"]] == list(ANSWERS.values())


def test_predictions_carry_per_item_scores_and_metrics_do_not(tmp_path, test_set):
    from distill.stats import load_item_scores

    out = evaluate_model(ScriptedModel(ANSWERS), read_test_items(test_set), progress=False)
    preds = {p["testset_id"]: p for p in out["predictions"]}
    assert (preds["test0000"]["errors"], preds["test0000"]["reference_words"]) == (1, 2)
    assert (preds["test0001"]["errors"], preds["test0001"]["reference_words"]) == (0, 3)
    assert "cider_d" not in preds["test0000"] and "errors" not in preds["test0002"]
    cap = out["accuracy"]["audiocaption_v2"]
    clips = [preds["test0002"]["cider_d"], preds["test0003"]["cider_d"]]
    assert sum(clips) / 2 == pytest.approx(cap["cider_d"])
    assert "per_item" not in cap and "per_item" not in out["accuracy"]["asr"]
    write_outputs(tmp_path / "eval", model=ScriptedModel(ANSWERS), name="s", role="student",
                  result=out)  # fmt: skip
    assert "per_item" not in (tmp_path / "eval" / "metrics.json").read_text()
    items = load_item_scores(tmp_path)
    assert items["asr"] == {
        "test0000": {"errors": 1, "reference_words": 2},
        "test0001": {"errors": 0, "reference_words": 3},
    }
    assert items["audiocaption_v2"]["test0003"] == {"cider_d": clips[1]}


def test_reference_override_and_mismatched_ids(test_set):
    items = read_test_items(test_set)
    refs = {i: "x" for i in ANSWERS}
    given = {"test0000": "hello word", "test0001": "a b c"}
    out = evaluate_model(ScriptedModel(ANSWERS), items[:2], references=given, progress=False)
    assert out["accuracy"]["asr"]["wer"] == pytest.approx(3 / 5)
    with pytest.raises(IdMismatchError, match=r"not test items \['test0002', 'test0003'\]"):
        evaluate_model(ScriptedModel(ANSWERS), items[:2], references=refs, progress=False)
    with pytest.raises(IdMismatchError, match=r"have no reference \['test0001'\]"):
        evaluate_model(
            ScriptedModel(ANSWERS), items[:2], references={"test0000": "a"}, progress=False
        )


def test_items_without_references_are_predicted_not_scored(tmp_path, test_set):
    path = tmp_path / "noref.json"
    src = read_test_items(test_set)
    path.write_text(
        json.dumps([{"testset_id": it.id, "path": it.path, "task": it.task} for it in src])
    )
    out = evaluate_model(ScriptedModel(ANSWERS), read_test_items(path), progress=False)
    assert out["accuracy"]["asr"]["metrics"] == []
    assert "no references" in out["accuracy"]["asr"]["notes"][0]


def test_write_outputs_files(tmp_path, test_set):
    model = ScriptedModel(dict(ANSWERS, test0003='rain, "heavy"\nrain'))
    out = evaluate_model(model, read_test_items(test_set), progress=False)
    metrics = write_outputs(
        tmp_path / "eval", model=model, name="scripted", role="baseline", result=out
    )
    on_disk = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert on_disk["model"]["name"] == "scripted" and on_disk["model"]["params_total"] == 3
    assert on_disk["accuracy"]["asr"]["metric"] == "wer"
    assert set(on_disk["versions"]) >= {"python", "torch", "jiwer", "aac-metrics"}
    assert on_disk["hardware"]["cpu_count"] >= 1
    assert metrics["decoding"]["num_beams"] == 4  # the field's default
    assert (metrics["decoding"]["max_new_tokens"], metrics["decoding"]["min_length"]) == (200, 1)
    rows = read_submission(tmp_path / "eval" / "predictions.csv")
    assert rows[3] == ("test0003", 'rain, "heavy"\nrain')
    lines = (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()
    assert json.loads(lines[2])["references"] == ["a dog barks", "barking dog"]


def test_cli_eval_on_a_saved_tiny_model(tmp_path, tiny_model, test_set):
    model_dir = tmp_path / "model"
    tiny_model.save_pretrained(model_dir, trainable_only=False)
    out_dir = tmp_path / "eval"
    rc = distill_main(
        ["eval", "--model", str(model_dir), "--data", test_set, "--out", str(out_dir),
         "--efficiency", "strict,baseline", "--warmup", "1", "--runs", "2", "--decode-tokens", "2",
         "--clip-seconds", "1", "--decode", "greedy", "--max-new-tokens", "3", "--role", "student",
         "--no-progress"]
    )  # fmt: skip
    assert rc == 0
    m = json.loads((out_dir / "metrics.json").read_text())
    assert m["model"]["name"] == "model" and m["model"]["size_on_disk_bytes"] > 0
    assert m["model"]["params_total"] >= m["model"]["params_trainable"] > 0
    assert set(m["efficiency"]) == {"baseline", "strict"}
    assert m["efficiency"]["strict"]["rtfx"] > 0
    assert m["decoding"] == {
        "num_beams": 1, "max_new_tokens": 3, "min_length": 1, "repetition_penalty": 1.0,
        "length_penalty": 1.0, "do_sample": False, "temperature": 1.0, "top_p": 1.0,
        "batch_size": 8,
    }  # fmt: skip
    assert m["accuracy"]["asr"]["metric"] == "wer" and m["accuracy"]["asr"]["wer"] >= 0
    assert len(read_submission(out_dir / "predictions.csv")) == 4


def test_cli_random_init_preset_measures_efficiency_only(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_TINY_TOKENIZER_DIR", str(tmp_path / "tok"))
    out_dir = tmp_path / "eff"
    rc = distill_main(
        ["eval", "--random-init", "tiny-student", "--efficiency", "baseline", "--warmup", "0",
         "--runs", "2", "--clip-seconds", "1", "--out", str(out_dir), "--no-progress"]
    )  # fmt: skip
    assert rc == 0
    m = json.loads((out_dir / "metrics.json").read_text())
    assert m["model"]["name"] == "tiny-student" and m["accuracy"] == {}
    assert m["random_init"]["preset"] == "tiny-student" and m["random_init"]["dtype"] == "float32"
    assert m["efficiency"]["baseline"]["ttft_s"] > 0
    assert not (out_dir / "predictions.csv").exists()


def test_random_init_substitutes_a_missing_hub_tokenizer(tmp_path, monkeypatch, tiny_tokenizer):
    from distill.eval import cli
    from distill.modeling.tiny import tiny_config

    monkeypatch.setenv("DISTILL_TINY_TOKENIZER_DIR", str(tmp_path / "tok"))
    preset = tiny_config("student", tiny_tokenizer).replace(tokenizer_path="Org/not-on-disk")
    monkeypatch.setattr(cli, "preset_registry", lambda: {"hubby": lambda: preset})
    model, notes = cli.build_random("hubby", torch.device("cpu"), torch.bfloat16)
    assert "'Org/not-on-disk' is not a local dir" in notes["tokenizer_substitute"]
    assert model.dtype == torch.bfloat16 and model.config.dtype == "bfloat16"
    with pytest.raises(SystemExit, match="unknown preset 'nope'"):
        cli.build_random("nope", torch.device("cpu"), torch.float32)


def test_missing_test_clip_raises_naming_the_file(tmp_path):
    from distill.data.audio import AudioError

    path = tmp_path / "t.json"
    path.write_text(json.dumps([{"testset_id": "test0000", "path": "gone.wav", "task": "asr"}]))
    with pytest.raises(AudioError, match="gone.wav"):
        evaluate_model(ScriptedModel({"test0000": "x"}), read_test_items(path), progress=False)
