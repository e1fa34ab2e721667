"""The demo's foundation models, pretrained and saved the way real ones are.

Glossary: b batch, s samples (16 kHz), m mel bins, f mel frames, t encoder frames,
n tokens, d width, c characters (CTC classes), k tags.

Real audio LLMs start from three pretrained parts; so does the demo:

- a speech encoder: a Whisper encoder trained with CTC on the synthetic speech, saved as a
  `WhisperModel.save_pretrained` directory (config.json + model.safetensors), loaded back
  through `whisper_path`;
- an audio encoder: CED trained to tag the sounds (the words of their captions, multi-label),
  saved as a flat CED state dict in safetensors, loaded back through `audio_encoder_path`
  (+ `audio_encoder_config`, as for any CED of a non-public width);
- two causal LMs with different tokenizers, text-pretrained on the corpus texts, each
  saved as an HF `save_pretrained` directory with its tokenizer, loaded through `llm_path`.

Each function is a pure function of its inputs and seed and writes a `foundation.json`
beside the weights with what it measured (loss, accuracy on the valid split), so the demo
can reuse a finished part.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from distill.data.annotations import Item, read_annotations
from distill.modeling.whisper import speech_frame_lengths

CTC_CHARS = " abcdefghijklmnopqrstuvwxyz'"  # index 0 is the CTC blank, chars start at 1
DONE = "foundation.json"


# ---- shared helpers ------------------------------------------------------------------------
def load_waves(items: Sequence[Item], seconds: float) -> tuple[Tensor, Tensor]:
    """All clips right-padded (or cut) to `seconds`: waves [b, s] and lengths [b]."""
    from distill.data.audio import load_audio

    n = int(round(seconds * 16000))
    waves = torch.zeros(len(items), n)
    lengths = torch.zeros(len(items), dtype=torch.long)
    for i, it in enumerate(items):
        x = load_audio(it.path, max_seconds=seconds)
        waves[i, : x.shape[0]] = x
        lengths[i] = x.shape[0]
    return waves, lengths


def _schedule(optimizer: torch.optim.Optimizer, steps: int, warmup: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.05 + 0.95 * 0.5 * (
            1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup))
        )

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _batches(n: int, batch_size: int, steps: int, generator: torch.Generator):
    """`steps` index batches drawn epoch by epoch from a seeded permutation."""
    order: list[int] = []
    for _ in range(steps):
        if len(order) < batch_size:
            order += torch.randperm(n, generator=generator).tolist()
        idx, order = order[:batch_size], order[batch_size:]
        yield torch.tensor(idx)


def _fit(
    model: nn.Module,
    loss_of,
    n: int,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    clip: float | None,
    desc: str,
    progress: bool,
) -> float:
    """AdamW with warm-up + cosine over `steps` seeded batches of `n` items; the last loss.

    `loss_of(idx)` gives the loss of the items `idx`; the caller sets train/eval modes.
    """
    from tqdm.auto import tqdm

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = _schedule(opt, steps, max(1, steps // 10))
    gen = torch.Generator().manual_seed(seed)
    loss_value = float("nan")
    with tqdm(total=steps, desc=desc, disable=not progress, leave=False) as bar:
        for idx in _batches(n, batch_size, steps, gen):
            loss = loss_of(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            sched.step()
            loss_value = float(loss.detach())
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
    return loss_value


def _write_done(out: Path, info: dict) -> None:
    (out / DONE).write_text(json.dumps(info, indent=1) + "\n")


def is_done(out: str | Path) -> bool:
    return (Path(out) / DONE).is_file()


def read_done(out: str | Path) -> dict:
    return json.loads((Path(out) / DONE).read_text())


# ---- speech encoder: Whisper + CTC ---------------------------------------------------------
def ctc_targets(texts: Sequence[str]) -> tuple[Tensor, Tensor]:
    """Character targets (1-based, 0 = blank) concatenated, and their lengths."""
    ids = [[CTC_CHARS.index(ch) + 1 for ch in t.lower() if ch in CTC_CHARS] for t in texts]
    return torch.tensor([i for row in ids for i in row]), torch.tensor([len(r) for r in ids])


def ctc_greedy(log_probs: Tensor, frames: Tensor) -> list[str]:
    """Best-path decoding of [b, t, c] log-probs over each item's first `frames` frames."""
    out = []
    for row, n in zip(log_probs.argmax(-1), frames.tolist()):
        chars, prev = [], 0
        for k in row[:n].tolist():
            if k != prev and k != 0:
                chars.append(CTC_CHARS[k - 1])
            prev = k
        out.append(" ".join("".join(chars).split()))
    return out


class CTCSpeechEncoder(nn.Module):
    """A Whisper encoder with a character CTC head (the head is dropped when saving)."""

    def __init__(self, whisper_config: dict) -> None:
        super().__init__()
        from transformers import WhisperConfig, WhisperModel

        from distill.modeling.whisper import build_log_mel

        self.whisper = WhisperModel(WhisperConfig(**whisper_config))
        self.log_mel = build_log_mel(self.whisper.config)
        self.head = nn.Linear(self.whisper.config.d_model, len(CTC_CHARS) + 1)

    def forward(self, waves: Tensor, lengths: Tensor) -> Tensor:
        """[b, s] waves -> [b, t, c] CTC log-probs."""
        return self.from_mel(self.log_mel(waves, lengths))

    def from_mel(self, mel: Tensor) -> Tensor:
        """[b, m, f] log-mel -> [b, t, c] CTC log-probs."""
        return self.head(self.whisper.encoder(mel).last_hidden_state).log_softmax(-1)


def pretrain_speech_encoder(
    out: str | Path,
    train: str,
    valid: str,
    *,
    whisper_config: dict,
    seconds: float,
    steps: int,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Train a Whisper encoder with CTC on the ASR items of `train`; save it to `out`.

    Returns:
        `out`, a `WhisperModel.save_pretrained` directory usable as `whisper_path`.
    """
    out = Path(out)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    train_items = [it for it in read_annotations(train) if it.task == "asr"]
    valid_items = [it for it in read_annotations(valid) if it.task == "asr"]
    waves, lengths = load_waves(train_items, seconds)
    model = CTCSpeechEncoder(whisper_config)
    with torch.no_grad():  # the front end is fixed: compute each clip's log-mel once
        mels = torch.cat(
            [model.log_mel(w, n) for w, n in zip(waves.split(256), lengths.split(256))]
        )

    def loss_of(idx: Tensor) -> Tensor:
        targets, target_len = ctc_targets([train_items[i].text for i in idx.tolist()])
        log_probs = model.from_mel(mels[idx])
        frames = speech_frame_lengths(lengths[idx], model.whisper.config)
        return F.ctc_loss(log_probs.transpose(0, 1), targets, frames, target_len,
                          zero_infinity=True)  # fmt: skip

    model.train()
    loss_value = _fit(model, loss_of, len(train_items), steps=steps, batch_size=batch_size,
                      lr=lr, seed=seed, clip=5.0, desc="speech encoder (CTC)",
                      progress=progress)  # fmt: skip
    cer = _ctc_eval(model, valid_items, seconds)
    model.whisper.save_pretrained(out, safe_serialization=True)
    info = {"kind": "whisper-ctc", "steps": steps, "train_ctc": loss_value, "valid": cer,
            "seconds": round(time.perf_counter() - t0, 1), "items": len(train_items)}  # fmt: skip
    _write_done(out, info)
    return out


@torch.no_grad()
def _ctc_eval(model: CTCSpeechEncoder, items: Sequence[Item], seconds: float) -> dict:
    """Greedy CTC word error rate on `items` (a foundation check, not the demo's metric)."""
    from distill.eval.asr import word_error_rate

    if not items:
        return {}
    model.eval()
    waves, lengths = load_waves(items, seconds)
    log_probs = model(waves, lengths)
    hyps = ctc_greedy(log_probs, speech_frame_lengths(lengths, model.whisper.config))
    wer = word_error_rate(hyps, [it.text for it in items])["wer"]
    model.train()
    return {"ctc_greedy_wer": round(wer, 4), "utterances": len(items)}


# ---- audio encoder: CED tagging ------------------------------------------------------------
def caption_tags(items: Sequence[Item]) -> list[str]:
    """The tag vocabulary: every word of the canonical captions, sorted."""
    words = {w for it in items for w in _words(it.text)}
    return sorted(words)


def _words(text: str) -> list[str]:
    return "".join(ch if ch.isalnum() else " " for ch in text.lower()).split()


def pretrain_audio_encoder(
    out: str | Path,
    train: str,
    valid: str,
    *,
    ced_config: dict,
    seconds: float,
    steps: int,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Train CED to tag the sounds of `train` with their caption words; save it to `out`.

    The tags are the words of each clip's canonical caption (multi-label, BCE on the
    mean-pooled tokens through CED's own `outputlayer`), as CED is trained on AudioSet labels.

    Returns:
        `out`; its `model.safetensors` is a flat CED state dict usable as `audio_encoder_path`
        with `audio_encoder_config = read_done(out)["config"]`.
    """
    from safetensors.torch import save_file

    from distill.modeling.ced import CED, CEDConfig

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    train_items = [it for it in read_annotations(train) if it.task != "asr"]
    valid_items = [it for it in read_annotations(valid) if it.task != "asr"]
    tags = caption_tags(train_items)
    config = dict(ced_config, outputdim=len(tags))
    model = CED(CEDConfig.from_dict(config))
    waves, lengths = load_waves(train_items, seconds)
    targets = _tag_targets(train_items, tags)
    calibrate_batchnorm(model, waves, lengths)
    model.train()
    model.init_bn.eval()  # keep the calibrated statistics: train and eval see the same input
    with torch.no_grad():  # the front end is fixed: each clip's log-mel once, not every step
        specs = torch.cat([model.spectrogram(w) for w in waves.split(256)])
    loss_value = _fit(
        model, lambda idx: F.binary_cross_entropy_with_logits(
            _tag_logits(model, waves[idx], lengths[idx], specs[idx]), targets[idx]),
        len(train_items), steps=steps, batch_size=batch_size, lr=lr, seed=seed, clip=None,
        desc="audio encoder (tags)", progress=progress,
    )  # fmt: skip
    model.eval()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, out / "model.safetensors")
    info = {"kind": "ced-tagger", "steps": steps, "config": config, "tags": tags,
            "train_bce": loss_value, "valid": _tag_eval(model, valid_items, tags, seconds),
            "seconds": round(time.perf_counter() - t0, 1), "items": len(train_items)}  # fmt: skip
    _write_done(out, info)
    return out


@torch.no_grad()
def calibrate_batchnorm(model, waves: Tensor, lengths: Tensor) -> None:
    """Set CED's input BatchNorm to the per-mel mean and variance of the training clips.

    Its running statistics would otherwise start at (0, 1) against dB values of tens, and a
    short pretraining (momentum 0.01) would leave train and eval inputs far apart.
    """
    bn = model.init_bn[1]
    specs = [model.spectrogram(w[: int(n)][None]) for w, n in zip(waves, lengths)]  # [1, c, m]
    frames = torch.cat([s[0] for s in specs], dim=-1)  # [c, all frames]
    bn.running_mean.copy_(frames.mean(-1))
    bn.running_var.copy_(frames.var(-1))


def _tag_targets(items: Sequence[Item], tags: list[str]) -> Tensor:
    index = {t: i for i, t in enumerate(tags)}
    y = torch.zeros(len(items), len(tags))
    for row, it in enumerate(items):
        for w in _words(it.text):
            if w in index:
                y[row, index[w]] = 1.0
    return y


def _tag_logits(model, waves: Tensor, lengths: Tensor, spec: Tensor | None = None) -> Tensor:
    """[b, k] tag logits: CED's `outputlayer` on the mean of each clip's valid tokens."""
    pad = torch.arange(waves.shape[1])[None, :] >= lengths[:, None]
    tokens, token_pad = model.extract_features(waves, pad, spec=spec)
    keep = (~token_pad).float()[..., None]
    pooled = (tokens * keep).sum(1) / keep.sum(1).clamp(min=1.0)
    return model.outputlayer(pooled)


@torch.no_grad()
def _tag_eval(model, items: Sequence[Item], tags: list[str], seconds: float) -> dict:
    if not items:
        return {}
    waves, lengths = load_waves(items, seconds)
    pred = _tag_logits(model, waves, lengths) > 0
    truth = _tag_targets(items, tags) > 0.5
    exact = (pred == truth).all(-1).float().mean()
    return {"tag_accuracy": round(float((pred == truth).float().mean()), 4),
            "exact_match": round(float(exact), 4), "clips": len(items)}  # fmt: skip


# ---- causal LMs: text pretraining ----------------------------------------------------------
def pretrain_lm(
    out: str | Path,
    tokenizer_dir: str,
    texts: Sequence[str],
    *,
    llm_config: dict,
    steps: int,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Train a causal LM (any HF `model_type`) on `BOS text EOS` lines; save it with its tokenizer.

    Returns:
        `out`, an HF `save_pretrained` directory (config, safetensors, tokenizer): `llm_path`.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = Path(out)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    cfg = dict(llm_config)
    cfg.update(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)  # fmt: skip
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
    rows = [
        ([tok.bos_token_id] if tok.bos_token_id is not None else [])
        + tok(t, add_special_tokens=False)["input_ids"]
        + [tok.eos_token_id]
        for t in texts
    ]
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(rows), n, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    labels = ids.masked_fill(mask == 0, -100)

    causal = torch.ones(n, n, dtype=torch.bool).tril()
    sdpa = model.config._attn_implementation == "sdpa"  # eager adds its mask as floats

    def loss_of(idx: Tensor) -> Tensor:
        width = int(mask[idx].sum(1).max())
        # the [b, 1, n, n] mask SDPA gets (causal and not padding), built here: transformers
        # would build the same booleans through torch.vmap on every step
        keep = mask[idx, :width]
        if sdpa:
            keep = causal[:width, :width] & keep[:, None, None, :].bool()
        return model(input_ids=ids[idx, :width], attention_mask=keep,
                     labels=labels[idx, :width]).loss  # fmt: skip

    model.train()
    loss_value = _fit(model, loss_of, len(rows), steps=steps, batch_size=batch_size, lr=lr,
                      seed=seed, clip=1.0, desc=f"LM ({llm_config['model_type']})",
                      progress=progress)  # fmt: skip
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    info = {"kind": "causal-lm", "model_type": llm_config["model_type"], "steps": steps,
            "train_ce": loss_value, "texts": len(rows),
            "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    _write_done(out, info)
    return out


# ---- the demo's foundation stage -----------------------------------------------------------
def lm_texts(items: Sequence[Item], template: str = "USER: {}\nASSISTANT:") -> list[str]:
    """Pretraining lines for the demo's LMs, one per distinct (prompt, answer), in two forms.

    - chat: "USER: <Speech></Speech> {prompt}\nASSISTANT: {answer}", as instruction-tuned LMs
      of the field have seen questions and answers;
    - copy: "USER: <Speech>{answer}</Speech> {prompt}\nASSISTANT: {answer}": in-context
      copying, which large text LMs can do and 2-layer LMs trained on a few thousand lines
      cannot. The audio LLM's bridge then only has to make the audio tokens read like text.
    """
    lines: dict[str, None] = {}
    for it in items:
        for answer in dict.fromkeys((it.text, *it.references)):
            if not answer:
                continue
            lines.setdefault(template.format("<Speech></Speech> " + it.prompt) + " " + answer)
            lines.setdefault(
                template.format(f"<Speech>{answer}</Speech> " + it.prompt) + " " + answer
            )
    return list(lines)


LM_CONFIGS = {
    # a Vicuna-like teacher LM and a smaller Llama-3.2-like student LM. Measured here (valid
    # token accuracy of a label-rich student after 300 steps): Qwen2 d=64 with tied embeddings
    # and 2 KV heads 0.31, Qwen2 d=96 untied 0.38, Llama d=64 untied 0.46 (0.96 at 600 steps)
    "teacher": {"model_type": "llama", "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 4, "max_position_embeddings": 256,
                "tie_word_embeddings": False},
    "student": {"model_type": "llama", "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 4, "max_position_embeddings": 256,
                "tie_word_embeddings": False},
}  # fmt: skip


def build_foundation(cfg, paths: dict[str, str], timings: dict | None = None) -> dict[str, str]:
    """Pretrain (or reuse) the speech encoder, the audio encoder and the two LMs.

    The four are independent: with `cfg.jobs` > 1 they pretrain side by side in separate
    processes, each with `cfg.threads` torch threads (as the students do), so their weights
    do not depend on `jobs`.

    Returns:
        {"speech_encoder", "audio_encoder", "teacher_lm", "student_lm"} directories.
    """
    found = foundation_dirs(cfg)
    todo = []
    for name in FOUNDATION_PARTS:
        if is_done(found[name]):
            print(f"[demo] foundation {name}: reusing {found[name]}")
        else:
            print(f"[demo] foundation {name}: pretraining")
            todo.append(name)
    from distill.demo._parallel import run_parallel

    done = run_parallel(_pretrain_part, [(cfg, paths, n, found[n]) for n in todo], cfg.jobs)
    seconds = dict(zip(todo, done))
    if timings is not None:
        timings.update({f"foundation_{n}_s": s for n, s in seconds.items()})
    return found


FOUNDATION_PARTS = ("speech_encoder", "audio_encoder", "teacher_lm", "student_lm")


def foundation_dirs(cfg) -> dict[str, str]:
    """Where each foundation part is saved: `<out>/foundation/<part>`."""
    root = Path(cfg.out_dir) / "foundation"
    return {name: str(root / name) for name in FOUNDATION_PARTS}


def _pretrain_part(cfg, paths: dict[str, str], name: str, out: str) -> float:
    """Pretrain one foundation part into `out` with `cfg.threads` threads; its seconds."""
    from distill.demo._parallel import pinned_threads
    from distill.modeling.tiny import tiny_whisper_config

    t = time.perf_counter()
    with pinned_threads(cfg.threads):
        if name == "speech_encoder":
            pretrain_speech_encoder(
                out, paths["train"], paths["valid"], seconds=cfg.window_seconds,
                whisper_config=tiny_whisper_config(d=cfg.speech_width, layers=cfg.speech_layers,
                                                   seconds=cfg.window_seconds),
                steps=cfg.speech_steps, lr=3e-3, seed=cfg.seed, progress=cfg.progress)  # fmt: skip
        elif name == "audio_encoder":
            pretrain_audio_encoder(
                out, paths["train"], paths["valid"], seconds=cfg.window_seconds,
                ced_config={"embed_dim": cfg.audio_width, "depth": 2, "num_heads": 4},
                steps=cfg.audio_steps, lr=cfg.audio_lr, seed=cfg.seed, progress=cfg.progress)  # fmt: skip
        else:
            role = name.removesuffix("_lm")
            width = cfg.teacher_lm_width if role == "teacher" else cfg.student_lm_width
            llm = dict(LM_CONFIGS[role], hidden_size=width, intermediate_size=2 * width)
            pretrain_lm(
                out, paths[f"{role}_tokenizer"], lm_texts(read_annotations(paths["train"])),
                llm_config=llm, steps=cfg.lm_steps, batch_size=32, seed=cfg.seed,
                progress=cfg.progress)  # fmt: skip
    return round(time.perf_counter() - t, 1)
