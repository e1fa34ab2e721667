"""`distill export`: SALMONN checkpoints that SALMONN's loader reads back, and HF dirs with
LoRA merged that give the same logits."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from distill.export import export_hf, export_salmonn, load_hf_export
from distill.modeling.config import AudioLLMConfig
from distill.modeling.salmonn import load_salmonn_checkpoint, read_salmonn_state, salmonn_key
from distill.modeling.tiny import build_tiny
from tests.modeling.conftest import make_batch


@pytest.fixture
def trained(tokenizer_dirs):
    model = build_tiny("teacher", tokenizer_dirs["unigram"], seed=0)
    with torch.no_grad():  # non-zero LoRA B, so merging changes the LLM's weights
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_salmonn_export_loads_back_through_salmonn_loader(trained, tokenizer_dirs, tmp_path):
    info = export_salmonn(trained, tmp_path / "s")
    raw = read_salmonn_state(tmp_path / "s" / "checkpoint.pth")
    assert not any(".default." in k for k in raw)  # SALMONN's spelling
    assert set(raw) == {salmonn_key(k) for k in trained.trainable_state_dict()}
    # the same frozen bases (SALMONN loads them from whisper_path / llama_path), fresh bridge
    fresh = build_tiny("teacher", tokenizer_dirs["unigram"], seed=0).eval()
    batch = make_batch()
    with torch.no_grad():
        assert not torch.allclose(fresh(batch).logits, trained(batch).logits)
    report = load_salmonn_checkpoint(fresh, tmp_path / "s" / "checkpoint.pth")
    assert report.ignored == [] and report.not_in_checkpoint == []
    for k, v in trained.trainable_state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    with torch.no_grad():  # every key came back: the same logits
        torch.testing.assert_close(fresh(batch).logits, trained(batch).logits, rtol=0, atol=0)
    doc = yaml.safe_load((tmp_path / "s" / "decode.yaml").read_text())
    assert doc["generate"]["num_beams"] == 4 and doc["generate"]["max_new_tokens"] == 200
    assert doc["model"]["ckpt"].endswith("checkpoint.pth")
    # the model block is one SALMONN's reader takes; what it cannot say is listed
    c = trained.config
    cfg = AudioLLMConfig.from_salmonn_yaml(doc, whisper_config=c.whisper_config,
                                           llm_config=c.llm_config,
                                           tokenizer_path=c.tokenizer_path)  # fmt: skip
    for key in ("second_per_window", "second_stride", "lora_rank", "lora_alpha", "end_sym",
                "max_txt_len", "num_speech_query_token"):  # fmt: skip
        assert getattr(cfg, key) == getattr(trained.config, key), key
    assert any("qformer_hidden" in c for c in info["caveats"])
    assert any("whisper_path" in c for c in info["caveats"])


def test_hf_export_merges_lora_and_gives_the_same_logits(trained, tmp_path):
    export_hf(trained, tmp_path / "h")
    llm_cfg = json.loads((tmp_path / "h" / "llm" / "config.json").read_text())
    assert llm_cfg["model_type"] == trained.config.llm_config["model_type"]
    from safetensors.torch import load_file

    llm_state = load_file(tmp_path / "h" / "llm" / "model.safetensors")
    assert not any("lora" in k for k in llm_state)  # merged, not carried
    again = load_hf_export(tmp_path / "h")
    assert not again.config.lora
    batch = make_batch()
    with torch.no_grad():
        want, got = trained(batch), again(batch)
    assert torch.equal(want.token_ids, got.token_ids)
    torch.testing.assert_close(got.logits, want.logits, atol=2e-5, rtol=1e-4)
    assert again.generate(batch, max_new_tokens=5) == trained.generate(batch, max_new_tokens=5)


def test_export_cli(trained, tmp_path):
    from distill.cli import main

    trained.save_pretrained(tmp_path / "run" / "model")
    assert (
        main(["export", str(tmp_path / "run"), "--format", "hf", "--out", str(tmp_path / "o")]) == 0
    )
    assert (tmp_path / "o" / "audio.safetensors").is_file()
    assert (
        main(["export", str(tmp_path / "nothing"), "--format", "hf", "--out", str(tmp_path / "x")])
        == 2
    )
