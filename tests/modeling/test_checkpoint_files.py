"""Unreadable tensor files: every loader names the file and says what is wrong with it."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import save_file

from distill.engine.checkpoint import load_checkpoint
from distill.modeling.audio_encoder import read_state_file
from distill.modeling.checkpoint import (
    CheckpointError,
    describe_keys,
    group_keys,
    load_weights,
    open_safetensors,
    read_tensors,
)
from distill.modeling.salmonn import read_salmonn_state

GARBAGE = b"not a checkpoint, just text\n" * 4


def _state():
    g = torch.Generator().manual_seed(0)
    return {"a": torch.randn(4, 4, generator=g), "b": torch.randn(3, generator=g)}


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.fixture
def files(tmp_path):
    """Good, truncated and garbage files of both formats, and their sizes."""
    torch.save({"model": _state()}, tmp_path / "good.pth")
    save_file(_state(), tmp_path / "good.safetensors")
    pth = (tmp_path / "good.pth").read_bytes()
    st = (tmp_path / "good.safetensors").read_bytes()
    header = int.from_bytes(st[:8], "little")
    return {
        "pth_cut": _write(tmp_path / "cut.pth", pth[: len(pth) // 2]),
        "pth_junk": _write(tmp_path / "junk.pth", GARBAGE),
        "st_cut_data": _write(tmp_path / "cut_data.safetensors", st[:-3]),
        "st_cut_header": _write(tmp_path / "cut_header.safetensors", st[: 8 + header // 2]),
        "st_junk": _write(tmp_path / "junk.safetensors", GARBAGE),
        "empty": _write(tmp_path / "empty.safetensors", b""),
        "pth_size": len(pth) // 2,
        "st_size": len(st),
        "header": header,
    }


def _starts(text: str) -> str:
    return "^" + re.escape(text)


def _message(path, what="checkpoint") -> str:
    with pytest.raises(CheckpointError) as err:
        read_tensors(path, what=what)
    return str(err.value)


def test_truncated_and_garbage_torch_files(files):
    cut, junk = files["pth_cut"], files["pth_junk"]
    assert _message(cut) == (
        f"cannot read checkpoint {cut}: truncated: a torch.save zip archive cut off at "
        f"{files['pth_size']} bytes (no central directory)"
    )
    assert _message(junk) == (
        f"cannot read checkpoint {junk}: not a torch checkpoint: neither a zip archive "
        "nor a pickle (starts with b'not a ch')"
    )


def test_truncated_and_garbage_safetensors_files(files):
    size, header = files["st_size"], files["header"]
    assert _message(files["st_cut_data"]) == (
        f"cannot read checkpoint {files['st_cut_data']}: truncated: {size - 3} bytes, "
        f"the header describes {size}"
    )
    assert _message(files["st_cut_header"]) == (
        f"cannot read checkpoint {files['st_cut_header']}: truncated: the header needs "
        f"{header} bytes, only {header // 2} follow the length"
    )
    length = int.from_bytes(GARBAGE[:8], "little")
    assert _message(files["st_junk"]) == (
        f"cannot read checkpoint {files['st_junk']}: not a safetensors file: its first 8 "
        f"bytes give a header length of {length}"
    )
    assert _message(files["empty"]) == (
        f"cannot read checkpoint {files['empty']}: the file is empty (0 bytes)"
    )


def test_a_bad_header_and_a_misnamed_file_are_told_apart(tmp_path):
    save_file(_state(), tmp_path / "x.safetensors")
    raw = bytearray((tmp_path / "x.safetensors").read_bytes())
    raw[8] = ord("[")  # the JSON header now opens a list that never closes
    bad = _write(tmp_path / "bad.safetensors", bytes(raw))
    assert _message(bad).startswith(
        f"cannot read checkpoint {bad}: bad safetensors header: not JSON"
    )
    named_pth = _write(tmp_path / "st.pth", (tmp_path / "x.safetensors").read_bytes())
    assert _message(named_pth) == (
        f"cannot read checkpoint {named_pth}: it is a safetensors file, not a torch pickle "
        "(name it .safetensors)"
    )
    torch.save(_state(), tmp_path / "x.pt")
    named_st = _write(tmp_path / "pt.safetensors", (tmp_path / "x.pt").read_bytes())
    assert _message(named_st) == (
        f"cannot read checkpoint {named_st}: it is a torch.save zip archive, not safetensors "
        "(name it .pt)"
    )


def test_a_corrupt_zip_member_is_named(tmp_path):
    torch.save(_state(), tmp_path / "x.pt")
    raw = bytearray((tmp_path / "x.pt").read_bytes())
    raw[200] ^= 0xFF  # inside the first member's data: the CRC no longer matches
    bad = _write(tmp_path / "bad.pt", bytes(raw))
    assert _message(bad) == (
        f"cannot read checkpoint {bad}: corrupt: zip member 'x/data.pkl' fails its CRC check"
    )


def test_every_loader_routes_through_the_helper(files, student, tmp_path):
    cut, junk = files["pth_cut"], files["st_junk"]
    with pytest.raises(
        CheckpointError, match=_starts(f"cannot read SALMONN checkpoint {cut}: truncated")
    ):
        read_salmonn_state(cut)
    with pytest.raises(
        CheckpointError, match=_starts(f"cannot read audio encoder checkpoint {cut}: ")
    ):
        read_state_file(cut)
    with pytest.raises(
        CheckpointError, match=_starts(f"cannot read AudioLLM weights {junk}: not a safe")
    ):
        load_weights(student, junk)
    with pytest.raises(
        CheckpointError, match=_starts(f"cannot read teacher cache shard {junk}: not a")
    ):
        open_safetensors(junk, what="teacher cache shard")
    step = tmp_path / "step_000001"
    step.mkdir()
    (step / "state.json").write_text(json.dumps({"step": 1}))
    (step / "model.safetensors").write_bytes(files["st_cut_data"].read_bytes())
    (step / "optimizer.pt").write_bytes(GARBAGE)
    with pytest.raises(
        CheckpointError, match=_starts(f"cannot read training checkpoint {step}/model")
    ):
        load_checkpoint(step)
    save_file(_state(), step / "model.safetensors")
    with pytest.raises(
        CheckpointError, match=_starts(f"cannot read optimizer state {step}/optimizer")
    ):
        load_checkpoint(step)


def test_a_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=_starts(f"checkpoint not found: {tmp_path}/nope.pt") + "$"
    ):
        read_tensors(tmp_path / "nope.pt")


def test_key_lists_are_complete_grouped_and_counted():
    keys = [
        "blocks.2.norm1.weight",
        "blocks.2.attn.qkv.weight",
        "ln_speech.weight",
        "ln_speech.bias",
        "speech_query_tokens",
        "blocks.10.mlp.fc1.bias",
    ]
    assert group_keys(keys) == {
        "blocks.10": ["blocks.10.mlp.fc1.bias"],
        "blocks.2": ["blocks.2.attn.qkv.weight", "blocks.2.norm1.weight"],
        "ln_speech": ["ln_speech.bias", "ln_speech.weight"],
        "speech_query_tokens": ["speech_query_tokens"],
    }
    assert describe_keys(group_keys(keys)) == (
        "blocks.10.mlp.fc1.bias; "
        "blocks.2.* (2): blocks.2.attn.qkv.weight, blocks.2.norm1.weight; "
        "ln_speech.* (2): ln_speech.bias, ln_speech.weight; "
        "speech_query_tokens"
    )
