"""Both efficiency protocols on a tiny AudioLLM on CPU: positive, consistent numbers."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from distill.contracts import AudioBatch
from distill.eval import efficiency as eff
from distill.eval.efficiency import (
    decode_step,
    measure_baseline,
    measure_strict,
    noise_batch,
    prefill,
    rtfx,
    weights_bytes,
)


def test_noise_clip_is_the_fields_probe():
    b = noise_batch(10.0, seed=3)
    assert b.waveforms.shape == (1, 160_000) and b.tasks == ["asr"]
    assert b.prompts == ["Recognize the speech and give me the transcription."]
    assert 0.98 < float(b.waveforms.std()) < 1.02  # N(0, 1) as np.random.randn
    assert torch.equal(b.waveforms, noise_batch(10.0, seed=3).waveforms)


@torch.no_grad()
def test_cached_decode_step_equals_a_full_forward(tiny_model):
    """The TPOT step (one token with the KV cache) gives the logits of an uncached pass."""
    batch = noise_batch(1.0)
    out, mask = prefill(tiny_model, batch)
    token = out.logits[:, -1].argmax(-1, keepdim=True)
    step, mask2 = decode_step(tiny_model, token, out.past_key_values, mask)
    assert mask2.shape[1] == mask.shape[1] + 1
    inputs = tiny_model.prepare_inputs(batch)
    embeds = torch.cat(
        [inputs["inputs_embeds"], tiny_model.llama_model.get_input_embeddings()(token)], dim=1
    )
    full = tiny_model.llama_model(inputs_embeds=embeds, attention_mask=mask2).logits[:, -1]
    torch.testing.assert_close(step.logits[:, -1], full, rtol=1e-4, atol=1e-4)


def test_baseline_protocol_on_cpu(tiny_model):
    r = measure_baseline(tiny_model, warmup=1, runs=3, clip_seconds=2.0, progress=False)
    assert r["protocol"] == "baseline" and r["memory_kind"] == "cpu_peak_rss_growth"
    assert r["ttft_s"] > 0 and r["tpot_s"] > 0
    assert r["ttft_s"] >= r["tpot_s"]  # encoders + Q-Former + prefill >= one decode step
    assert r["inference_s"] == pytest.approx(r["ttft_s"] + r["tpot_s"])
    assert r["memory_gb"] >= 0 and r["process_peak_rss_gb"] > r["weights_gb"] > 0
    assert r["weights_gb"] == pytest.approx(weights_bytes(tiny_model) / 1024**3)
    assert r["settings"]["runs"] == 3 and r["settings"]["statistic"] == "mean"
    assert r["prefill_positions"] > tiny_model.num_windows(32_000)  # audio tokens + prompt
    assert r["units"]["memory_gb"] == "GiB"
    for key in ("ttft_s", "tpot_s", "inference_s"):  # the spread of the repeats, for the report
        assert 0 < r[f"{key}_p10"] <= r[f"{key}_p90"] and r[f"{key}_std"] >= 0, key


def test_strict_protocol_on_cpu(tiny_model):
    r = measure_strict(
        tiny_model, warmup=1, runs=3, decode_tokens=4, clip_seconds=2.0, progress=False
    )
    assert r["protocol"] == "strict" and r["settings"]["decode_tokens"] == 4
    for key in ("ttft_s", "tpot_s", "inference_s"):
        assert 0 < r[f"{key}_p10"] <= r[key] <= r[f"{key}_p90"], key
        assert r[f"{key}_mean"] > 0 and r[f"{key}_std"] >= 0
    assert r["ttft_s"] >= r["tpot_s"]
    assert r["memory_kind"] == "cpu_peak_rss_growth" and r["process_peak_rss_gb"] > 0
    with pytest.raises(ValueError, match="decode_tokens"):
        measure_strict(tiny_model, decode_tokens=0)


def test_rtfx():
    assert rtfx(10.0, 2.0) == 5.0
    with pytest.raises(ValueError):
        rtfx(1.0, 0.0)


def test_cuda_bookkeeping_with_a_mocked_device(tiny_model, monkeypatch):
    """No GPU on the dev box: fake the CUDA calls to pin the synchronization and memory
    semantics of both protocols (baseline never resets the peak; strict resets it after
    loading and reports the weights apart)."""
    calls, peak = Counter(), {"v": 1000}

    def max_allocated(device=None):
        peak["v"] += 10
        return peak["v"]

    monkeypatch.setattr(eff, "model_device", lambda m: torch.device("cuda", 0))
    monkeypatch.setattr(AudioBatch, "to", lambda self, device: self)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.update(["sync"]))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", max_allocated)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 500)
    monkeypatch.setattr(
        torch.cuda,
        "reset_peak_memory_stats",
        lambda device=None: (calls.update(["reset"]), peak.update(v=600)),
    )
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.update(["empty"]))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "FakeGPU")

    r = measure_baseline(tiny_model, warmup=1, runs=2, clip_seconds=1.0, progress=False)
    assert calls["sync"] == 2 * 3 and calls["reset"] == 0  # before/after each iteration only
    assert r["memory_kind"] == "cuda_max_allocated" and r["device"] == "cuda:0 (FakeGPU)"
    assert r["memory_gb"] == pytest.approx((1020 + 1030) / 2 / 1024**3)  # mean of timed peaks
    assert r["memory_gb_std"] == pytest.approx(7.0710678 / 1024**3)  # stdev of 1020, 1030
    assert (r["memory_gb_p10"], r["memory_gb_p90"]) == (1020 / 1024**3, 1030 / 1024**3)

    calls.clear()
    r = measure_strict(
        tiny_model, warmup=1, runs=2, decode_tokens=3, clip_seconds=1.0, progress=False
    )
    assert calls["reset"] == 1
    assert calls["sync"] == 1 + 3 * (2 + 3)  # after loading; around prefill; after each step
    assert r["weights_gb"] == pytest.approx(500 / 1024**3)
    assert r["memory_gb"] == pytest.approx(610 / 1024**3)  # the peak since the reset
    assert r["activation_peak_gb"] == pytest.approx(110 / 1024**3)
