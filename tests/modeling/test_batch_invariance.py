"""An item's outputs and gradients do not depend on its batch mates' lengths."""

import pytest
import torch

from distill.contracts import AudioBatch
from distill.presets import build_model


def _batch(lengths, answers, seed=0):
    g = torch.Generator().manual_seed(seed)
    waves = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        waves[i, :n] = 0.1 * torch.randn(n, generator=g)
    return AudioBatch(
        waveforms=waves,
        lengths=torch.tensor(lengths),
        tasks=["asr"] * len(lengths),
        prompts=["Recognize the speech and give me the transcription."] * len(lengths),
        answers=answers,
        ids=[f"u{i}" for i in range(len(lengths))],
    )


@pytest.mark.parametrize("preset", ["tiny-student", "tiny-teacher"])  # CED and BEATs
def test_batched_equals_one_by_one(preset):
    model = build_model(preset, seed=0, overrides={"lora_dropout": 0.0, "qformer_dropout": 0.0})
    model.train()
    answers = ["red cat", "a much longer answer here", "dog"]
    full = _batch([16000, 47000, 20000], answers)
    total = float(model.count_answer_tokens(full))

    def grads(batches):
        model.zero_grad()
        logits = []
        for b in batches:
            out = model(b)
            per_token = torch.nn.functional.cross_entropy(
                out.logits.transpose(1, 2), out.token_ids, reduction="none"
            )
            (per_token * out.mask).sum().div(total).backward()
            logits += [out.logits[i, : int(out.mask[i].sum())] for i in range(len(b))]
        flat = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        return flat, logits

    g_full, l_full = grads([full])
    g_one, l_one = grads([full.select([i]) for i in range(3)])
    for a, b in zip(l_full, l_one):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_full, g_one, atol=1e-6, rtol=1e-5)
