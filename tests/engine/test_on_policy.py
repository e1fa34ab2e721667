"""On-policy KD (GKD): the student samples answers and the live teacher scores them."""

from __future__ import annotations

import json

import pytest
import torch

import distill.engine.trainer as trainer_mod
from distill.engine.on_policy import OnPolicy, require_live_teacher, sample_answers
from distill.modeling.tiny import build_tiny
from distill.modeling.tokenizers import train_tiny_tokenizer
from losses import GeneralizedJSD
from losses.align import align_positions
from teachers import AudioLLMTeacher
from tests.modeling.conftest import make_batch

GKD = "{_component_: losses.GeneralizedJSD, beta: 0.5, temperature: 1.0}"


def _steps(run):
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r]


def test_draws_are_seeded_per_step_and_micro_batch():
    half = OnPolicy(lmbda=0.5)
    picks = [half.draws(0, step, micro) for step in range(400) for micro in range(2)]
    assert picks == [half.draws(0, step, micro) for step in range(400) for micro in range(2)]
    assert 0.4 < sum(picks) / len(picks) < 0.6
    assert picks != [OnPolicy(lmbda=0.5).draws(1, s, m) for s in range(400) for m in range(2)]
    assert not any(OnPolicy(lmbda=0.0).draws(0, s, 0) for s in range(100))
    assert all(OnPolicy(lmbda=1.0).draws(0, s, 0) for s in range(100))
    with pytest.raises(ValueError, match="on_policy_lmbda"):
        OnPolicy(lmbda=1.5)


def test_a_cached_teacher_is_refused_with_the_reason():
    class Cache:
        live = False

    with pytest.raises(ValueError, match="live teacher.*Cache.*on_policy_lmbda: 0"):
        require_live_teacher(Cache())
    with pytest.raises(ValueError, match="needs a teacher"):
        require_live_teacher(None)


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    student = build_tiny("student", train_tiny_tokenizer(root / "bpe", "bpe"), seed=0)
    teacher = build_tiny("teacher", train_tiny_tokenizer(root / "uni", "unigram"), seed=1)
    return student, teacher


def test_sampling_replaces_the_answers_and_restores_the_mode(tiny_pair):
    student, _ = tiny_pair
    student.train()
    batch = make_batch(answers=("the dog barks", "a cat"))
    settings = OnPolicy(lmbda=1.0, max_new_tokens=6)
    torch.manual_seed(0)
    first = sample_answers(student, batch, settings)
    torch.manual_seed(0)
    again = sample_answers(student, batch, settings)
    assert student.training  # back in train mode
    assert first.answers == again.answers  # sampling follows torch's seed
    assert first.answers != list(batch.answers) and batch.answers == ["the dog barks", "a cat"]
    assert first.ids == batch.ids and torch.equal(first.waveforms, batch.waveforms)
    torch.manual_seed(1)
    other = sample_answers(student, batch, settings)
    assert other.answers != first.answers  # it samples: another seed, other answers


def test_cross_tokenizer_scoring_pairs_a_hand_made_answer(tiny_pair):
    """A student answer "the dog barks at the cat", retokenised by the teacher: positions
    pair where both tokenizers cut the text at the same characters, and GJSD is the mean
    of the per-position JSD over exactly those pairs (computed here by hand)."""
    student, teacher_model = tiny_pair
    student.eval()
    text = "the dog barks at the cat"
    batch = make_batch(answers=(text,), lengths=(48_000,))
    with torch.no_grad():
        s_out = student(batch)
    t_sig = AudioLLMTeacher(model=teacher_model).signals(batch)
    assert not s_out.tokenizer.same_as(t_sig.tokenizer)
    index, paired = align_positions(s_out.offsets, s_out.mask, t_sig.offsets, t_sig.mask)
    spans = [
        (text[a:b], text[c:d])
        for (a, b), (c, d), ok in zip(
            s_out.offsets[0].tolist(), t_sig.offsets[0, index[0]].tolist(), paired[0].tolist()
        )
        if ok
    ]
    assert spans and all(x == y for x, y in spans)  # paired tokens cover the same text
    assert paired[0, int(s_out.mask[0].sum()) - 1]  # the end symbols pair
    from losses.align import shared_vocab

    s_ids, t_ids = shared_vocab(s_out.tokenizer, t_sig.tokenizer)
    want, count = 0.0, 0
    for i in range(s_out.mask.shape[1]):
        if paired[0, i]:
            lq = torch.log_softmax(s_out.logits[0, i, s_ids].double(), -1)
            lp = torch.log_softmax(t_sig.logits[0, index[0, i], t_ids].double(), -1)
            lm = torch.logaddexp(
                lp + torch.log(torch.tensor(0.5)), lq + torch.log(torch.tensor(0.5))
            )
            want += float(0.5 * (lp.exp() * (lp - lm)).sum() + 0.5 * (lq.exp() * (lq - lm)).sum())
            count += 1
    assert count >= 2  # the end symbols and at least one word piece
    got = GeneralizedJSD(beta=0.5)(s_out, t_sig).metrics["kd"]
    assert float(got) == pytest.approx(want / count, rel=1e-4)


@pytest.mark.slow
def test_lmbda_zero_is_off_policy_and_one_trains_on_samples(make_recipe, tmp_path, monkeypatch):
    common = {"optim.max_steps": 2, "train.save_every": 2, "train.eval_every": 0, "loss": GKD}
    make_recipe("kl_ce", out="off", **common).fit()
    make_recipe("kl_ce", out="zero", **common, **{"train.on_policy_lmbda": 0.0}).fit()
    off, zero = _steps(tmp_path / "off"), _steps(tmp_path / "zero")
    assert [r["loss"] for r in off] == [r["loss"] for r in zero]  # exactly
    assert "on_policy" not in zero[0]

    seen = []
    real = trainer_mod.sample_answers

    def spy(student, batch, settings):
        out = real(student, batch, settings)
        seen.append((list(batch.answers), list(out.answers), settings.max_new_tokens))
        return out

    monkeypatch.setattr(trainer_mod, "sample_answers", spy)
    overrides = {"train.on_policy_lmbda": 1.0, "train.on_policy_max_new_tokens": 5}
    make_recipe("kl_ce", out="on", **common, **overrides).fit()
    on = _steps(tmp_path / "on")
    assert [r["on_policy"] for r in on] == [1.0, 1.0]
    assert len(seen) == 2 and all(m == 5 for *_, m in seen)
    assert all(labels != sampled for labels, sampled, _ in seen)
    assert on[0]["loss"] != off[0]["loss"]  # scored on what the student said
    assert all(r["loss"] == r["loss"] for r in on)  # finite (not NaN)


def test_ce_gives_nothing_on_the_students_own_samples():
    from distill.contracts import ModelOutputs
    from losses import CE

    logits = torch.randn(2, 3, 7, requires_grad=True)
    kw = dict(
        mask=torch.ones(2, 3, dtype=torch.bool), token_ids=torch.zeros(2, 3, dtype=torch.long)
    )
    labels = CE()(ModelOutputs(**kw, logits=logits), None)
    assert float(labels.loss.detach()) > 0
    own = CE()(ModelOutputs(**kw, logits=logits, sampled=True), None)
    own.loss.backward()
    assert float(own.loss) == 0.0 and float(logits.grad.abs().sum()) == 0.0
    assert float(CE(on_sampled=True)(ModelOutputs(**kw, logits=logits, sampled=True)).loss) == (
        pytest.approx(float(labels.loss))
    )
    batch = make_batch()
    assert batch.select([1]).sampled is False
    batch.sampled = True
    assert batch.select([1]).sampled and batch.to("cpu").sampled
