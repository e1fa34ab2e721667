"""The contracts every part of `distill` plugs into.

Glossary of shape letters, used the same way in every module:
    b  batch items          s  waveform samples (16 kHz)
    n  answer-span tokens   v  vocabulary size     k  top-k kept logits
    d  hidden width         w  Q-Former windows    t  encoder frames

One `AudioBatch` goes to both models. Each model computes its own features
and its own tokenization from it, and returns `ModelOutputs` restricted to the
answer span. A teacher returns the same fields as `TeacherSignals`, with logits
either dense or sparse top-k. A loss maps (student, teacher) to a `LossOutput`.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

SAMPLE_RATE = 16_000

# Optional hidden states a forward pass may expose, with their layouts.
HIDDEN_FIELDS = ("llm_hidden", "qformer", "speech", "audio")


class ContractError(ValueError):
    """A contract object was built with inconsistent shapes or values."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ContractError(msg)


def _check_tensor(name: str, x: Tensor | None, ndim: int, owner: str) -> None:
    if x is None:
        return
    _check(isinstance(x, Tensor), f"{owner}.{name} must be a torch.Tensor, got {type(x).__name__}")
    _check(x.ndim == ndim, f"{owner}.{name} must have {ndim} dims, got shape {tuple(x.shape)}")


@dataclass
class AudioBatch:
    """One batch of raw audio and text, shared by teacher and student.

    Attributes:
        waveforms: [b, s] float mono waveforms at 16 kHz, zero-padded on the right.
        lengths: [b] int64 number of valid samples of each waveform (>= 1).
        tasks: b task names, e.g. "asr", "audiocaption_v2".
        prompts: b instructions, e.g. "Recognize the speech and give me the transcription."
        answers: b answer texts; empty strings at inference time.
        ids: b stable item ids (used to align predictions, caches and references).
        sample_rate: must be 16000; kept so a mistaken resample is caught early.
        sampled: the answers were sampled by the student being trained (on-policy KD,
            `distill.engine.on_policy`), not labels; losses see it as `ModelOutputs.sampled`.
    """

    waveforms: Tensor
    lengths: Tensor
    tasks: list[str]
    prompts: list[str]
    answers: list[str]
    ids: list[str]
    sample_rate: int = SAMPLE_RATE
    sampled: bool = False

    def __post_init__(self) -> None:
        _check_tensor("waveforms", self.waveforms, 2, "AudioBatch")
        _check_tensor("lengths", self.lengths, 1, "AudioBatch")
        _check(
            self.sample_rate == SAMPLE_RATE,
            f"AudioBatch.sample_rate must be {SAMPLE_RATE} Hz, got {self.sample_rate}; "
            "resample with distill.data.audio.load_audio first",
        )
        b, s = self.waveforms.shape
        _check(b > 0, "AudioBatch is empty (0 items)")
        _check(s > 0, "AudioBatch.waveforms has 0 samples: empty waveform")
        _check(self.waveforms.is_floating_point(), "AudioBatch.waveforms must be floating point")
        _check(
            self.lengths.shape[0] == b,
            f"AudioBatch.lengths has {self.lengths.shape[0]} entries for {b} waveforms",
        )
        for name in ("tasks", "prompts", "answers", "ids"):
            value = getattr(self, name)
            _check(
                isinstance(value, (list, tuple)) and len(value) == b,
                f"AudioBatch.{name} must be a list of {b} strings, got "
                f"{type(value).__name__} of length {len(value) if hasattr(value, '__len__') else '?'}",
            )
        lengths = self.lengths.tolist()
        bad = [self.ids[i] for i, n in enumerate(lengths) if n < 1]
        _check(not bad, f"AudioBatch has empty waveforms (length 0) for ids {bad}")
        _check(
            max(lengths) <= s,
            f"AudioBatch.lengths max {max(lengths)} exceeds padded length {s}",
        )

    def __len__(self) -> int:
        return self.waveforms.shape[0]

    def to(self, device: torch.device | str) -> AudioBatch:
        """The same batch on `device`. Not validated again: it was, on the host, when built
        (validation reads the lengths, which on a GPU would wait on the device)."""
        moved = copy.copy(self)
        moved.waveforms = self.waveforms.to(device)
        moved.lengths = self.lengths.to(device)
        return moved

    def select(self, index: Sequence[int]) -> AudioBatch:
        """A sub-batch of the given items, re-padded to its own longest waveform."""
        index = list(index)
        idx = torch.as_tensor(index, dtype=torch.long)
        lengths = self.lengths.index_select(0, idx.to(self.lengths.device))
        s = int(lengths.max())
        return AudioBatch(
            waveforms=self.waveforms.index_select(0, idx.to(self.waveforms.device))[:, :s],
            lengths=lengths,
            tasks=[self.tasks[i] for i in index],
            prompts=[self.prompts[i] for i in index],
            answers=[self.answers[i] for i in index],
            ids=[self.ids[i] for i in index],
            sampled=self.sampled,
        )


@dataclass(frozen=True)
class TokenizerInfo:
    """Identity of a tokenizer, enough for cross-tokenizer losses.

    Attributes:
        name: human-readable name, e.g. "Qwen/Qwen2.5-0.5B-Instruct" or "tiny-bpe-512".
        pieces: surface string of every token id (what the id decodes to on its own),
            length v. Tokens of two tokenizers with equal pieces are the "shared vocabulary".
        fingerprint: hash of `pieces`; equal fingerprints mean the same tokenizer.
    """

    name: str
    pieces: tuple[str, ...]
    fingerprint: str = ""

    def __post_init__(self) -> None:
        if not self.fingerprint:
            digest = hashlib.sha1("\x00".join(self.pieces).encode("utf-8")).hexdigest()[:16]
            object.__setattr__(self, "fingerprint", digest)

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def same_as(self, other: TokenizerInfo | None) -> bool:
        return other is not None and self.fingerprint == other.fingerprint

    def __repr__(self) -> str:  # the pieces tuple is huge; keep reprs readable
        return f"TokenizerInfo(name={self.name!r}, vocab_size={self.vocab_size}, fingerprint={self.fingerprint!r})"


@dataclass
class _Signals:
    """Fields shared by `ModelOutputs` and `TeacherSignals`.

    Attributes:
        mask: [b, n] bool, True on real answer tokens (answer text plus end symbol).
        token_ids: [b, n] int64 answer token ids (the CE targets); 0 where masked.
        offsets: [b, n, 2] int64 character (start, end) of each token in the answer text;
            the end symbol gets (len(answer), len(answer)).
        tokenizer: identity of the tokenizer that produced `token_ids`.
        llm_hidden: [b, n, d] LLM last hidden state at the positions that predict each answer token.
        qformer: [b, w, d] Q-Former window outputs (before the projection into the LLM).
        qformer_mask: [b, w] bool, True on windows that hold real audio.
        speech: [b, t, d] speech-encoder features after `ln_speech`.
        audio: [b, t, d] audio-encoder features after `ln_audio`.
        ids: b item ids, copied from the batch, so losses and caches can check alignment.
        tasks: b task names, copied from the batch (e.g. an ASR-only auxiliary loss uses them).
        num_tokens: global answer-token count for this optimizer step, set by the engine
            (summed over gradient-accumulation micro-batches and processes, divided by the
            number of processes). Losses normalise by it when set so accumulation and DDP
            averaging give exactly the full-batch mean; None means "this micro-batch only".
    """

    mask: Tensor
    token_ids: Tensor
    offsets: Tensor | None = None
    tokenizer: TokenizerInfo | None = None
    llm_hidden: Tensor | None = None
    qformer: Tensor | None = None
    qformer_mask: Tensor | None = None
    speech: Tensor | None = None
    audio: Tensor | None = None
    ids: list[str] | None = None
    tasks: list[str] | None = None
    num_tokens: float | Tensor | None = None

    def _validate_common(self, owner: str) -> tuple[int, int]:
        _check_tensor("mask", self.mask, 2, owner)
        _check(self.mask.dtype == torch.bool, f"{owner}.mask must be bool, got {self.mask.dtype}")
        b, n = self.mask.shape
        _check_tensor("token_ids", self.token_ids, 2, owner)
        _check(
            tuple(self.token_ids.shape) == (b, n),
            f"{owner}.token_ids shape {tuple(self.token_ids.shape)} != mask shape {(b, n)}",
        )
        if self.offsets is not None:
            _check_tensor("offsets", self.offsets, 3, owner)
            _check(
                tuple(self.offsets.shape) == (b, n, 2),
                f"{owner}.offsets shape {tuple(self.offsets.shape)} != {(b, n, 2)}",
            )
        if self.llm_hidden is not None:
            _check_tensor("llm_hidden", self.llm_hidden, 3, owner)
            _check(
                tuple(self.llm_hidden.shape[:2]) == (b, n),
                f"{owner}.llm_hidden shape {tuple(self.llm_hidden.shape)} must start with {(b, n)}",
            )
        for name in ("qformer", "speech", "audio"):
            x = getattr(self, name)
            _check_tensor(name, x, 3, owner)
            if x is not None:
                _check(x.shape[0] == b, f"{owner}.{name} batch {x.shape[0]} != {b}")
        if self.qformer_mask is not None:
            _check(self.qformer is not None, f"{owner}.qformer_mask given without qformer")
            _check(
                tuple(self.qformer_mask.shape) == tuple(self.qformer.shape[:2]),
                f"{owner}.qformer_mask shape {tuple(self.qformer_mask.shape)} != "
                f"{tuple(self.qformer.shape[:2])}",
            )
        for name in ("ids", "tasks"):
            value = getattr(self, name)
            if value is not None:
                _check(len(value) == b, f"{owner}.{name} has {len(value)} entries for batch {b}")
        return b, n

    @property
    def batch_size(self) -> int:
        return self.mask.shape[0]

    def hidden(self, name: str) -> Tensor | None:
        if name not in HIDDEN_FIELDS:
            raise ContractError(f"unknown hidden state {name!r}; expected one of {HIDDEN_FIELDS}")
        return getattr(self, name)


@dataclass
class ModelOutputs(_Signals):
    """What a student forward pass exposes to losses.

    Attributes:
        logits: [b, n, v] logits at the positions that predict each answer token
            (row i predicts `token_ids[:, i]`). Kept in the model's dtype; losses upcast.
            None in a features-only pass (`AudioLLM.forward(logits=False)`, a frozen
            teacher's), which then carries at least one hidden state, and in a fused pass.
        head: the output head (`lm_head`) in a fused pass (`AudioLLM.forward(head=True)`):
            logits are None and `head(llm_hidden)` would give them; the losses that support
            it compute from `llm_hidden` chunk by chunk (`losses._fused_head`) and never
            hold [b, n, v].
        sampled: the answers are the student's own samples (on-policy KD); `losses.CE`
            gives 0 on them unless told otherwise (no training on its own mistakes).
        (all other fields: see `_Signals`)
    """

    logits: Tensor | None = None
    head: nn.Module | None = None
    sampled: bool = False

    def __post_init__(self) -> None:
        b, n = self._validate_common("ModelOutputs")
        if self.head is not None:
            _check(
                self.logits is None and self.llm_hidden is not None,
                "ModelOutputs.head (a fused pass) comes with llm_hidden and without logits",
            )
            return
        if self.logits is None:
            _check(
                any(
                    getattr(self, f) is not None
                    for f in ("llm_hidden", "qformer", "speech", "audio")
                ),
                "ModelOutputs.logits is required (None only in a features-only pass, with a "
                "hidden state)",
            )
            return
        _check_tensor("logits", self.logits, 3, "ModelOutputs")
        _check(
            tuple(self.logits.shape[:2]) == (b, n),
            f"ModelOutputs.logits shape {tuple(self.logits.shape)} must start with {(b, n)}",
        )
        if self.tokenizer is not None:
            _check(
                self.logits.shape[-1] >= self.tokenizer.vocab_size,
                f"ModelOutputs.logits vocab {self.logits.shape[-1]} < tokenizer "
                f"{self.tokenizer.name} vocab {self.tokenizer.vocab_size}",
            )

    @property
    def is_fused(self) -> bool:
        """Hidden states and head instead of logits (see `head`)."""
        return self.head is not None

    @property
    def vocab_size(self) -> int:
        if self.logits is None and self.head is not None:
            out = getattr(self.head, "out_features", None)
            return int(out if out is not None else self.head.weight.shape[0])
        return self.logits.shape[-1]


@dataclass
class TeacherSignals(_Signals):
    """What a teacher provides: the `ModelOutputs` fields, logits dense or sparse.

    At most one of the two logit forms is set (none: features only, for losses that match
    hidden states and read no logits; then at least one hidden state is set):
        logits: [b, n, v] dense logits.
        topk_values: [b, n, k] the k largest logits (raw, temperature 1), descending.
        topk_indices: [b, n, k] int64 their vocabulary ids.
        logsumexp: [b, n] optional log-sum-exp of the full logits (temperature 1); with it a
            loss can keep the probability mass outside the top-k as a tail bucket.
        vocab_size: v for the sparse form (the teacher's full vocabulary size).
    """

    logits: Tensor | None = None
    topk_values: Tensor | None = None
    topk_indices: Tensor | None = None
    logsumexp: Tensor | None = None
    vocab_size: int | None = None

    def __post_init__(self) -> None:
        b, n = self._validate_common("TeacherSignals")
        dense = self.logits is not None
        sparse = self.topk_values is not None or self.topk_indices is not None
        _check(
            not (dense and sparse),
            "TeacherSignals takes one of dense `logits` or sparse `topk_values`+`topk_indices`, "
            "not both",
        )
        if not (dense or sparse):
            _check(
                any(
                    getattr(self, f) is not None
                    for f in ("llm_hidden", "qformer", "speech", "audio")
                ),
                "TeacherSignals without logits (features only) needs at least one hidden state",
            )
            return
        if dense:
            _check_tensor("logits", self.logits, 3, "TeacherSignals")
            _check(
                tuple(self.logits.shape[:2]) == (b, n),
                f"TeacherSignals.logits shape {tuple(self.logits.shape)} must start with {(b, n)}",
            )
            if self.vocab_size is None:
                self.vocab_size = self.logits.shape[-1]
        else:
            _check(
                self.topk_values is not None and self.topk_indices is not None,
                "TeacherSignals sparse form needs both topk_values and topk_indices",
            )
            _check_tensor("topk_values", self.topk_values, 3, "TeacherSignals")
            _check_tensor("topk_indices", self.topk_indices, 3, "TeacherSignals")
            _check(
                self.topk_values.shape == self.topk_indices.shape
                and tuple(self.topk_values.shape[:2]) == (b, n),
                f"TeacherSignals top-k shapes {tuple(self.topk_values.shape)} / "
                f"{tuple(self.topk_indices.shape)} must both be {(b, n, 'k')}",
            )
            _check(
                self.vocab_size is not None,
                "TeacherSignals sparse form needs vocab_size (the teacher's full vocabulary)",
            )
            if self.logsumexp is not None:
                _check(
                    tuple(self.logsumexp.shape) == (b, n),
                    f"TeacherSignals.logsumexp shape {tuple(self.logsumexp.shape)} != {(b, n)}",
                )

    @property
    def is_sparse(self) -> bool:
        return self.logits is None and self.topk_values is not None

    @property
    def has_logits(self) -> bool:
        return self.logits is not None or self.topk_values is not None

    @classmethod
    def from_outputs(cls, outputs: ModelOutputs, topk: int | None = None) -> TeacherSignals:
        """Detach a model's outputs into teacher signals, optionally sparsified to top-k."""
        kwargs = {
            f.name: getattr(outputs, f.name)
            for f in fields(_Signals)
            if f.name not in ("num_tokens",)
        }
        for name in ("llm_hidden", "qformer", "speech", "audio"):
            if kwargs[name] is not None:
                kwargs[name] = kwargs[name].detach()
        if outputs.head is not None:
            raise ContractError(
                "a fused pass (ModelOutputs.head, no logits) cannot become teacher signals; "
                "run the teacher with logits"
            )
        if outputs.logits is None:  # features only
            return cls(**kwargs)
        logits = outputs.logits.detach()
        if topk is None:
            return cls(**kwargs, logits=logits)
        values, indices = logits.float().topk(min(topk, logits.shape[-1]), dim=-1)
        lse = torch.logsumexp(logits.float(), dim=-1)
        return cls(
            **kwargs,
            topk_values=values,
            topk_indices=indices,
            logsumexp=lse,
            vocab_size=logits.shape[-1],
        )


@dataclass
class LossOutput:
    """A scalar loss and detached metrics for logging.

    Attributes:
        loss: scalar tensor to backpropagate.
        metrics: name -> number or detached 0-dim tensor; every term a loss computed. They
            stay tensors so that computing them never waits on the device; the engine
            fetches them all at once on logging steps (`float(v)` reads one by hand).
    """

    loss: Tensor
    metrics: dict[str, float | Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(isinstance(self.loss, Tensor), "LossOutput.loss must be a tensor")
        _check(
            self.loss.ndim == 0,
            f"LossOutput.loss must be a scalar, got shape {tuple(self.loss.shape)}",
        )
        for k, v in self.metrics.items():
            if isinstance(v, Tensor):
                _check(
                    v.numel() == 1,
                    f"LossOutput.metrics[{k!r}] must be a scalar, got {tuple(v.shape)}",
                )
                if v.requires_grad:
                    self.metrics[k] = v.detach()
            else:
                self.metrics[k] = float(v)  # a host number: no wait


@runtime_checkable
class DistillLoss(Protocol):
    """A loss: hyper-parameters in `__init__`, learned bridges as registered submodules."""

    def __call__(self, student: ModelOutputs, teacher: TeacherSignals) -> LossOutput: ...


@runtime_checkable
class Teacher(Protocol):
    """Anything that turns a batch into teacher signals, frozen, under `torch.no_grad()`."""

    def signals(self, batch: AudioBatch) -> TeacherSignals: ...
