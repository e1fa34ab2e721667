"""The demo's foundation models reload through the real checkpoint fields, bit for bit."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill.demo.config import DemoConfig
from distill.demo.corpus import label_split, make_data
from distill.demo.foundation import (
    CTC_CHARS,
    build_foundation,
    ctc_greedy,
    ctc_targets,
    lm_texts,
    read_done,
)
from distill.demo.stages import audio_llm_config


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    cfg = DemoConfig.quick(out_dir=str(tmp_path_factory.mktemp("demo")), progress=False)
    paths = make_data(cfg)
    return cfg, paths, build_foundation(cfg, paths)


def _model(cfg, found, role):
    from distill.modeling.audio_llm import AudioLLM
    from distill.modeling.config import AudioLLMConfig

    return AudioLLM(AudioLLMConfig.from_dict(audio_llm_config(cfg, found, role)))


@pytest.mark.parametrize("role", ["teacher", "student"])
def test_foundation_reloads_through_checkpoint_fields(world, role):
    cfg, _, found = world
    model = _model(cfg, found, role)
    assert model.config.whisper_path == found["speech_encoder"]
    assert model.config.llm_path == found[f"{role}_lm"]
    # Whisper: WhisperModel.save_pretrained -> whisper_path -> WhisperModel.from_pretrained
    saved = load_file(Path(found["speech_encoder"]) / "model.safetensors")
    enc = {k.removeprefix("encoder."): v for k, v in saved.items() if k.startswith("encoder.")}
    got = model.speech_encoder.state_dict()
    assert enc.keys() == got.keys()
    for k in enc:
        torch.testing.assert_close(got[k], enc[k], rtol=0, atol=0)
    # CED: flat state dict -> audio_encoder_path (+ audio_encoder_config) -> load_ced, strict
    ced = load_file(Path(found["audio_encoder"]) / "model.safetensors")
    for k, v in model.beats.state_dict().items():
        torch.testing.assert_close(v, ced[k], rtol=0, atol=0)
    assert model.config.audio_encoder_config == read_done(found["audio_encoder"])["config"]
    # LLM: save_pretrained dir -> llm_path -> AutoModelForCausalLM.from_pretrained, LoRA on top
    lm = load_file(Path(found[f"{role}_lm"]) / "model.safetensors")
    base = model.llama_model.get_base_model().state_dict()
    for k, v in lm.items():
        torch.testing.assert_close(base[k.replace("proj.weight", "proj.base_layer.weight")]
                                   if k.replace("proj.weight", "proj.base_layer.weight") in base
                                   else base[k], v, rtol=0, atol=0)  # fmt: skip
    assert len(model.tokenizer) == lm["model.embed_tokens.weight"].shape[0]
    # frozen parts are frozen; the bridge and LoRA train
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"ln_speech", "ln_audio", "speech_Qformer", "speech_query_tokens",
                         "speech_llama_proj", "llama_model"}  # fmt: skip
    assert all("lora_" in n for n, p in model.llama_model.named_parameters() if p.requires_grad)


def test_teacher_and_student_tokenizers_differ(world):
    cfg, _, found = world
    t, s = _model(cfg, found, "teacher"), _model(cfg, found, "student")
    assert len(t.tokenizer) != len(s.tokenizer)
    assert not t.tokenizer_info.same_as(s.tokenizer_info)


def test_label_split_is_stratified_and_seeded(world):
    from distill.data.annotations import read_annotations

    _, paths, _ = world
    items = read_annotations(paths["train"])
    lab, unlab = label_split(items, 0.25, seed=3)
    assert len(lab) + len(unlab) == len(items)
    assert {it.id for it in lab}.isdisjoint({it.id for it in unlab})
    for task in {it.task for it in items}:
        n = sum(it.task == task for it in items)
        assert sum(it.task == task for it in lab) == max(1, round(0.25 * n))
    again, _ = label_split(items, 0.25, seed=3)
    other, _ = label_split(items, 0.25, seed=4)
    assert [it.id for it in again] == [it.id for it in lab]
    assert [it.id for it in other] != [it.id for it in lab]
    everything, none = label_split(items, 1.0, seed=3)
    assert len(everything) == len(items) and none == []


def test_ctc_targets_and_greedy_decoding_round_trip():
    targets, lengths = ctc_targets(["red cat", "a"])
    assert lengths.tolist() == [7, 1]
    # a one-hot path with repeats and blanks (0) collapses back to the text
    c = {ch: CTC_CHARS.index(ch) + 1 for ch in CTC_CHARS}
    path = [0, c["r"], c["r"], 0, c["e"], c["d"], c[" "], c[" "], c["c"], 0, c["a"], c["t"]]
    log_probs = torch.full((1, len(path), len(CTC_CHARS) + 1), -10.0)
    log_probs[0, torch.arange(len(path)), torch.tensor(path)] = 0.0
    assert ctc_greedy(log_probs, torch.tensor([len(path)])) == ["red cat"]


def test_lm_texts_have_chat_and_copy_lines(world):
    from distill.data.annotations import read_annotations

    _, paths, _ = world
    items = read_annotations(paths["train"])
    lines = lm_texts(items)
    it = next(i for i in items if i.task == "asr")
    assert f"USER: <Speech></Speech> {it.prompt}\nASSISTANT: {it.text}" in lines
    assert f"USER: <Speech>{it.text}</Speech> {it.prompt}\nASSISTANT: {it.text}" in lines
    assert len(lines) == len(set(lines))


def test_feature_store_is_rebuilt_when_its_fingerprint_is_stale(world):
    """A world whose store was written under another fingerprint (an older version's) gets
    the store its encoders find, with the same rows; a current one is reused untouched."""
    from safetensors.torch import load_file

    from distill.demo.world import frozen_features

    cfg, paths, found = world
    store = Path(frozen_features(cfg, paths, found, {}))
    (current,) = store.glob("*.safetensors")
    rows = load_file(current)
    stamp = current.stat().st_mtime_ns
    assert frozen_features(cfg, paths, found, {}) == str(store)
    assert current.stat().st_mtime_ns == stamp  # reused, not rewritten
    current.rename(store / "0123456789abcdef01234567.safetensors")  # a stale fingerprint
    timings: dict = {}
    frozen_features(cfg, paths, found, timings)
    assert current.is_file() and "features_s" in timings
    again = load_file(current)
    assert again.keys() == rows.keys() and all(again[k].equal(rows[k]) for k in rows)


def test_pseudo_labels_of_another_teacher_are_not_reused(tmp_path):
    from distill.demo.stages import pseudo_labels_current, teacher_fingerprint

    teacher = tmp_path / "teacher"
    (teacher / "model").mkdir(parents=True)
    weights = teacher / "model" / "model.safetensors"
    weights.write_bytes(b"the first teacher's weights")
    out = tmp_path / "pseudo_labels.json"
    assert not pseudo_labels_current(out, teacher)  # nothing written yet
    out.write_text('{"annotation": []}\n')
    stats = out.with_suffix(".stats.json")
    stats.write_text(json.dumps({"kept": 0}))  # an older version's stats name no teacher
    assert not pseudo_labels_current(out, teacher)
    stats.write_text(json.dumps({"teacher": teacher_fingerprint(teacher)}))
    assert pseudo_labels_current(out, teacher)
    weights.write_bytes(b"a retrained teacher's weights")
    assert not pseudo_labels_current(out, teacher)
