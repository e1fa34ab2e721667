"""`AudioLLM`: the SALMONN-style audio language model (teacher and student alike).

Glossary: b batch, s samples, t encoder frames, c fused channels, w audio tokens
(windows x queries), h Q-Former hidden, d LLM hidden, N full sequence, n answer tokens, v vocab.

waveform -> Whisper log-mel -> `speech_encoder` -> `ln_speech`            [b, t, d_whisper]
waveform -> `beats` (BEATs or CED, optional) -> `ln_audio`                [b, t', d_audio]
zero-pad the shorter in time, concat channels                             [b, t, c]
windows of 17 frames -> `speech_Qformer` with `speech_query_tokens`       [b, w, h]
`speech_llama_proj`                                                       [b, w, d]
splice into [BOS] USER: <Speech> ... </Speech> {instruction}\\nASSISTANT: answer end_sym
-> `llama_model` (HF causal LM + peft LoRA)

Attribute names are SALMONN's, so its checkpoints map by name (see `salmonn.py`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection
from functools import cached_property

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from distill.contracts import HIDDEN_FIELDS, AudioBatch, ModelOutputs, TokenizerInfo
from distill.modeling import prompt as P
from distill.modeling.config import AudioLLMConfig
from distill.modeling.feature_cache import FrozenFeatureCache, stack_padded
from distill.modeling.llm import add_lora, base_causal_lm, build_llm, llm_hidden_size
from distill.modeling.qformer import (
    WindowQFormer,
    count_windows,
    split_windows,
    window_mask,
    window_size,
)
from distill.modeling.whisper import (
    build_log_mel,
    build_whisper_encoder,
    speech_frame_lengths,
    whisper_frames_per_second,
)


class AudioLLM(nn.Module):
    """Whisper [+ BEATs/CED] -> window-level Q-Former -> projection -> LLM with LoRA.

    Args:
        config: the model's `AudioLLMConfig`.
        device: where to put the model after building (built on CPU first).
        meta: build every parameter on the meta device (no memory, no weights read);
            for counting parameters and listing keys of large models in seconds.
    """

    def __init__(self, config: AudioLLMConfig, *, device=None, meta: bool = False) -> None:
        super().__init__()
        self.config = config
        self.meta = meta
        tok_path = config.resolved_tokenizer_path
        self.tokenizer = None
        if tok_path is not None:
            try:
                self.tokenizer = P.load_tokenizer(
                    tok_path, config.trust_remote_code, use_fast=config.use_fast
                )
            except (OSError, ValueError):
                if not meta:
                    raise
        with torch.device("meta") if meta else contextlib.nullcontext():
            self._build(load_weights=not meta)
        from distill.modeling.precision import apply_precision

        apply_precision(self, self.precision, device)
        self._freeze()
        if device is not None and not meta:
            self.to(device)
        self._prompt_cache: dict[str, list[int]] = {}
        # frozen-encoder outputs per clip (`feature_cache.py`); None computes them every time
        self.feature_cache: FrozenFeatureCache | None = None

    # ------------------------------------------------------------------ build
    def _build(self, load_weights: bool) -> None:
        cfg = self.config
        self.speech_encoder = build_whisper_encoder(
            cfg.whisper_path, cfg.whisper_config, load_weights=load_weights
        )
        wcfg = self.speech_encoder.config
        self.log_mel = build_log_mel(wcfg)
        self.ln_speech = nn.LayerNorm(wcfg.d_model)
        width = wcfg.d_model
        if cfg.audio_encoder is not None:
            from distill.modeling.audio_encoder import build_audio_encoder

            self.beats = build_audio_encoder(
                cfg.audio_encoder, config=cfg.audio_encoder_config, path=cfg.audio_encoder_path
            )
            audio_width = self.beats.output_dim
            self.ln_audio = nn.LayerNorm(audio_width)
            width += audio_width
        else:
            self.beats = None
            self.ln_audio = None
        self.speech_Qformer = WindowQFormer(
            cfg.qformer_hidden, cfg.qformer_layers, cfg.qformer_heads, cfg.qformer_ffn, width,
            dropout=cfg.qformer_dropout,
        )  # fmt: skip
        self.speech_Qformer.apply(_init_bert)
        self.speech_query_tokens = nn.Parameter(
            torch.zeros(1, cfg.num_speech_query_token, cfg.qformer_hidden).normal_(std=0.02)
        )
        llm = build_llm(cfg, load_weights=load_weights)
        if (
            self.tokenizer is not None
            and len(self.tokenizer) > llm.get_input_embeddings().num_embeddings
        ):
            llm.resize_token_embeddings(len(self.tokenizer))  # SALMONN adds [PAD] and resizes
        self.speech_llama_proj = nn.Linear(cfg.qformer_hidden, llm_hidden_size(llm))
        self.llama_model = add_lora(llm, cfg)
        fps = whisper_frames_per_second(wcfg)
        self.window_kernel = window_size(fps, cfg.second_per_window)
        self.window_stride = window_size(fps, cfg.second_stride)

    def _freeze(self) -> None:
        frozen = [self.speech_encoder] if self.config.freeze_whisper else []
        if self.beats is not None and self.config.freeze_audio_encoder:
            frozen.append(self.beats)
        for module in frozen:
            for p in module.parameters():
                p.requires_grad_(False)
            module.eval()

    def train(self, mode: bool = True) -> AudioLLM:
        """Train mode everywhere except the frozen encoders, which stay in eval (as SALMONN)."""
        super().train(mode)
        if self.config.freeze_whisper:
            self.speech_encoder.eval()
        if self.beats is not None and self.config.freeze_audio_encoder:
            self.beats.eval()
        return self

    # ------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        return self.speech_query_tokens.device

    @property
    def dtype(self) -> torch.dtype:
        """The front ends' and bridge's dtype (the LLM's may differ: `precision`)."""
        return self.speech_query_tokens.dtype

    @property
    def precision(self) -> str:
        from distill.modeling.precision import FROM_DTYPE

        return self.config.precision or FROM_DTYPE[self.config.dtype]

    @cached_property
    def tokenizer_info(self) -> TokenizerInfo:
        self._need_tokenizer()
        # the fast twin of a slow tokenizer, so both kinds of one vocabulary are the same
        # tokenizer (a slow Llama decodes the lone byte <0x20> to " ", the fast one to "")
        tok = self.offset_tokenizer or self.tokenizer
        return P.make_tokenizer_info(tok, self.config.name + ":" + _tok_name(self))

    @cached_property
    def end_ids(self) -> list[int]:
        """Ids of end_sym: appended to every training answer."""
        self._need_tokenizer()
        return P.end_sym_ids(self.tokenizer, self.config.end_sym)

    @cached_property
    def stop_ids(self) -> list[int]:
        """Ids that end generation: end_sym, eos and the family's end tokens in the vocab."""
        self._need_tokenizer()
        return P.stop_token_ids(self.tokenizer, self.config.end_sym)

    @cached_property
    def offset_tokenizer(self):
        """The tokenizer that gives answer offsets: this one if fast, else its fast twin
        (None when none can be built; then outputs carry no offsets)."""
        self._need_tokenizer()
        if getattr(self.tokenizer, "is_fast", False):
            return self.tokenizer
        return P.load_fast_twin(self.config.resolved_tokenizer_path, self.config.trust_remote_code)

    def num_windows(self, num_samples: int) -> int:
        """Audio tokens the LLM sees for a clip (88 for any clip up to 30 s with real Whisper).

        Whisper always encodes its fixed input window, so this is constant for clips within it.
        """
        t = self.speech_encoder.config.max_source_positions
        q = self.config.num_speech_query_token
        return count_windows(t, self.window_kernel, self.window_stride) * q

    def count_answer_tokens(self, batch: AudioBatch) -> int:
        """Answer tokens (with end_sym, after truncation) that `forward` will score."""
        answers = P.tokenize_answers(
            self.tokenizer, batch.answers, self.end_ids, self.config.max_txt_len, batch.ids
        )
        return sum(len(a.ids) for a in answers)

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Trainable parameters and all persistent buffers (what SALMONN saves)."""
        frozen = {n for n, p in self.named_parameters() if not p.requires_grad}
        return {k: v for k, v in self.state_dict().items() if k not in frozen}

    # ------------------------------------------------------------------ audio
    def frozen_fingerprint(self) -> str:
        """A hash of everything a cached frozen-encoder row depends on.

        The frozen encoders' weights and buffers (Whisper, BEATs/CED), the log-mel front end,
        the encoder configs and the dtype: two models share a feature store
        (`FrozenFeatureCache.save`/`load`) exactly when this matches, e.g. a teacher and a
        student over the same encoders. Where a checkpoint was loaded from is not part of
        it (the config's `_name_or_path`), so a run directory that moves keeps its store.
        Costs one pass over the encoders' bytes.
        """
        import hashlib
        import json

        h = hashlib.sha256()
        parts: list[tuple[str, nn.Module]] = [("log_mel", self.log_mel)]
        if self.config.freeze_whisper:
            parts.append(("speech", self.speech_encoder))
            speech = self.speech_encoder.config.to_dict()
            speech.pop("_name_or_path", None)
            h.update(json.dumps(speech, sort_keys=True, default=str).encode())
        if self.beats is not None and self.config.freeze_audio_encoder:
            parts.append(("audio", self.beats))
            h.update(json.dumps(self.config.audio_encoder_config, sort_keys=True,
                                default=str).encode())  # fmt: skip
        h.update(str(self.dtype).encode())
        for prefix, module in parts:
            for name, t in sorted(module.state_dict().items()):
                t = t.detach().contiguous().cpu()
                h.update(f"{prefix}.{name}:{tuple(t.shape)}:{t.dtype}".encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()[:24]

    @torch.no_grad()
    def encode_frozen(self, batch: AudioBatch) -> None:
        """Compute the frozen encoders' rows of `batch` into `feature_cache` (no bridge, no LLM)."""
        if self.feature_cache is None:
            raise ValueError("encode_frozen needs model.feature_cache = FrozenFeatureCache()")
        wav = batch.waveforms.to(self.device)
        lengths = batch.lengths.to(self.device)
        if self.config.freeze_whisper:
            self._speech_features(wav, lengths, batch.ids)
        if self.beats is not None and self.config.freeze_audio_encoder:
            self._audio_features(wav, lengths, batch.ids)

    def _encode(self, batch: AudioBatch) -> dict[str, Tensor]:
        wav = batch.waveforms.to(self.device)
        lengths = batch.lengths.to(self.device)
        speech = self.ln_speech(self._speech_features(wav, lengths, batch.ids))  # [b, t, d_w]
        out = {"speech": speech}
        fused = speech
        if self.beats is not None:
            audio, token_pad = self._audio_features(wav, lengths, batch.ids)
            audio = self.ln_audio(audio)  # [b, t', d_a]
            if token_pad is not None:
                # tokens of the batch padding are zeroed, like the zero-padding below, so an
                # item's audio tokens do not depend on its batch mates (batched == one by one)
                audio = audio.masked_fill(token_pad[..., None], 0.0)
            # Whisper's fixed window spans the clip (SALMONN: 1496 BEATs tokens <= 1500 frames
            # for 30 s); extra tokens of a longer batch padding would only add windows
            audio = audio[:, : speech.shape[1]]
            out["audio"] = audio
            fused = torch.cat(
                [speech, F.pad(audio, (0, 0, 0, speech.shape[1] - audio.shape[1]))], dim=-1
            )
        windows = split_windows(fused, self.window_kernel, self.window_stride)  # [b, w, k, c]
        qformer = self.speech_Qformer(self.speech_query_tokens, windows)  # [b, w*q, h]
        real = speech_frame_lengths(lengths, self.speech_encoder.config)
        out["qformer"] = qformer
        out["mask"] = window_mask(
            real, windows.shape[1], self.window_stride, self.config.num_speech_query_token
        )
        out["embeds"] = self.speech_llama_proj(qformer)
        return out

    def _speech_features(self, wav: Tensor, lengths: Tensor, ids) -> Tensor:
        """Whisper encoder output [b, t, d_w] (before `ln_speech`), cached when frozen."""

        def compute(index: list[int]) -> list[Tensor]:
            sel = torch.as_tensor(index, device=wav.device)
            mel = self.log_mel(wav[sel], lengths[sel]).to(self.dtype)  # [b, m, f]
            return list(self.speech_encoder(mel).last_hidden_state)

        cache = self.feature_cache if self.config.freeze_whisper else None
        if cache is None:
            return self.speech_encoder(self.log_mel(wav, lengths).to(self.dtype)).last_hidden_state
        return torch.stack(cache.rows("speech", ids, lengths, compute))

    def _audio_features(self, wav: Tensor, lengths: Tensor, ids) -> tuple[Tensor, Tensor | None]:
        """BEATs/CED tokens [b, t', d_a] and their padding mask, cached when frozen.

        A cached item keeps only its valid tokens (a prefix: padding is at the end); the batch
        is rebuilt at the token count the whole batch would give, padding marked True.
        """
        pad = torch.arange(wav.shape[1], device=wav.device)[None, :] >= lengths[:, None]
        cache = self.feature_cache if self.config.freeze_audio_encoder else None
        if cache is None:
            return self.beats.extract_features(wav.float(), pad)  # features computed in fp32

        def compute(index: list[int]) -> list[Tensor]:
            sel = torch.as_tensor(index, device=wav.device)
            s = int(lengths[sel].max())
            feats, token_pad = self.beats.extract_features(wav[sel, :s].float(), pad[sel, :s])
            if token_pad is None:
                return list(feats)
            return [f[: int((~p).sum())] for f, p in zip(feats, token_pad)]

        rows = cache.rows("audio", ids, lengths, compute)
        return stack_padded(rows, self.beats.num_tokens(wav.shape[1]))

    # ----------------------------------------------------------------- splice
    def _tokens(self, text: str) -> list[int]:
        ids = self._prompt_cache.get(text)
        if ids is None:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            self._prompt_cache[text] = ids
        return ids

    def _prompt_ids(self, instruction: str) -> tuple[list[int], list[int]]:
        before, after = P.split_prompt(self.config.prompt_template, instruction)
        bos = self.tokenizer.bos_token_id
        return ([bos] if bos is not None else []) + self._tokens(before), self._tokens(after)

    def prepare_inputs(
        self, batch: AudioBatch, with_answer: bool = False, audio: dict | None = None
    ) -> dict:
        """LLM inputs for a batch: prompt (+ answer) embeddings with the audio spliced in.

        Args:
            batch: the batch.
            with_answer: append answer + end_sym and right-pad (training); otherwise the
                prompt alone, left-padded (generation / prefill).
            audio: precomputed `_encode(batch)` output (internal).

        Returns:
            dict with inputs_embeds [b, N, d], attention_mask [b, N] long, audio (the
            `_encode` dict) and, with_answer: answer_pos [b, n] (sequence index of each
            answer token), answer_ids [b, n], answer_mask [b, n] bool, offsets [b, n, 2]
            (None when a slow tokenizer has no fast twin that agrees on the ids).
        """
        self._need_tokenizer()
        audio = audio if audio is not None else self._encode(batch)
        embeds = audio["embeds"]  # [b, w, d]
        b, w, _ = embeds.shape
        answers = None
        if with_answer:
            answers = P.tokenize_answers(
                self.tokenizer, batch.answers, self.end_ids, self.config.max_txt_len, batch.ids,
                offset_tokenizer=self.offset_tokenizer,
            )  # fmt: skip
        rows, slots = [], []
        for i, instruction in enumerate(batch.prompts):
            pre, post = self._prompt_ids(instruction)
            tail = post + (answers[i].ids if answers else [])
            rows.append(pre + [-1] * w + tail)
            slots.append(len(pre))
        N = max(len(r) for r in rows)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((b, N), -2, dtype=torch.long)
        starts = []
        for i, r in enumerate(rows):
            start = 0 if with_answer else N - len(r)
            ids[i, start : start + len(r)] = torch.tensor(r, dtype=torch.long)
            starts.append(start)
        ids = ids.to(self.device)
        attention = (ids != -2).long()
        is_audio = ids == -1
        tok_embeds = self.llama_model.get_input_embeddings()(
            ids.clamp(min=0).masked_fill(ids == -2, pad_id)
        )
        inputs = tok_embeds.masked_scatter(is_audio[..., None], embeds.to(tok_embeds.dtype))
        out = {"inputs_embeds": inputs, "attention_mask": attention, "audio": audio}
        if with_answer:
            n = max(len(a.ids) for a in answers)
            pos = torch.zeros(b, n, dtype=torch.long)
            tgt = torch.zeros(b, n, dtype=torch.long)
            offs = torch.zeros(b, n, 2, dtype=torch.long)
            mask = torch.zeros(b, n, dtype=torch.bool)
            has_offsets = all(a.offsets is not None for a in answers)
            for i, a in enumerate(answers):
                k = len(a.ids)
                first = len(rows[i]) - k + starts[i]
                pos[i, :k] = torch.arange(first, first + k)
                tgt[i, :k] = torch.tensor(a.ids)
                if has_offsets:
                    offs[i, :k] = torch.tensor(a.offsets, dtype=torch.long).reshape(k, 2)
                mask[i, :k] = True
            dev = self.device
            out.update(
                answer_pos=pos.to(dev),
                answer_ids=tgt.to(dev),
                answer_mask=mask.to(dev),
                offsets=offs.to(dev) if has_offsets else None,
            )
        return out

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        batch: AudioBatch,
        hidden: Collection[str] = (),
        logits: bool = True,
        head: bool = False,
    ) -> ModelOutputs:
        """Teacher-forced pass; logits only on the answer span.

        Args:
            batch: the batch (answers are the targets).
            hidden: any of "llm_hidden", "qformer", "speech", "audio" to return as well.
            logits: False skips the LLM (unless "llm_hidden" is asked for): only the answer
                tokens and the audio features come back, `logits` is None. A frozen
                teacher whose losses match features only needs no more.
            head: a fused pass: no logits; `llm_hidden` [b, n, d] and `head` (the LLM's
                output head) come back instead, for the losses that compute logits chunk
                by chunk and never hold [b, n, v] (`losses._fused_head`).

        Returns:
            `ModelOutputs` with logits [b, n, v] (row j predicts token_ids[:, j]), mask,
            token_ids, offsets, tokenizer, ids and the requested hidden states.
        """
        unknown = set(hidden) - set(HIDDEN_FIELDS)
        if unknown:
            raise ValueError(f"unknown hidden state(s) {sorted(unknown)}; expected {HIDDEN_FIELDS}")
        inp = self.prepare_inputs(batch, with_answer=True)
        mask = inp["answer_mask"]
        audio = inp["audio"]
        extra = {}
        scores = None
        extra_head = None
        if head:
            hidden, logits = {*hidden, "llm_hidden"}, False
        if logits or "llm_hidden" in hidden:
            lm = base_causal_lm(self.llama_model)
            # right padding under a causal mask: every pad key sits after every real query
            # of its row, so no padding mask is needed at the positions read here (a test
            # checks this bit for bit), and none is read (no wait on the device). The
            # causal mask itself is handed over built (`_causal_mask`).
            body = lm.get_decoder()(
                inputs_embeds=inp["inputs_embeds"],
                attention_mask=_causal_mask(lm, inp["inputs_embeds"]),
                use_cache=False,
            ).last_hidden_state  # [b, N, d]
            pred_pos = (inp["answer_pos"] - 1).clamp(min=0)  # position i predicts token i + 1
            h = torch.gather(body, 1, pred_pos[..., None].expand(-1, -1, body.shape[-1]))
            if logits:
                scores = lm.get_output_embeddings()(h)  # [b, n, v]
            if "llm_hidden" in hidden:
                extra["llm_hidden"] = h  # [b, n, d]
            if head:
                extra_head = lm.get_output_embeddings()
        if "qformer" in hidden:
            extra.update(qformer=audio["qformer"], qformer_mask=audio["mask"])
        if "speech" in hidden:
            extra["speech"] = audio["speech"]
        if "audio" in hidden and "audio" in audio:
            extra["audio"] = audio["audio"]
        return ModelOutputs(
            logits=scores,
            head=extra_head,
            mask=mask,
            token_ids=inp["answer_ids"].masked_fill(~mask, 0),
            offsets=inp["offsets"],
            tokenizer=self.tokenizer_info,
            ids=list(batch.ids),
            tasks=list(batch.tasks),
            **extra,
        )

    @torch.no_grad()
    def generate(self, batch: AudioBatch, decode=None, **overrides) -> list[str]:
        """Decode answers; stripped texts.

        Args:
            batch: the batch (answers are ignored).
            decode: a `DecodeSettings` or a preset name ("greedy", the default, or "salmonn").
            **overrides: `DecodeSettings` fields, e.g. num_beams=4, max_new_tokens=200.
        """
        from distill.modeling.generation import generate_text

        return generate_text(self, batch, decode, **overrides)

    # ------------------------------------------------------------- save/load
    def save_pretrained(self, path, *, trainable_only: bool = True) -> None:
        """Write model.safetensors + config.json + tokenizer/ (see `checkpoint.py`)."""
        from distill.modeling.checkpoint import save_pretrained

        save_pretrained(self, path, trainable_only=trainable_only)

    @classmethod
    def from_pretrained(cls, path, *, device=None) -> AudioLLM:
        """Rebuild a model saved with `save_pretrained` and load its weights."""
        from distill.modeling.checkpoint import from_pretrained

        return from_pretrained(cls, path, device=device)

    def _need_tokenizer(self) -> None:
        if self.tokenizer is None:
            raise RuntimeError(
                f"AudioLLM {self.config.name!r} has no tokenizer (tokenizer_path="
                f"{self.config.resolved_tokenizer_path!r}); meta models cannot run"
            )


def _causal_mask(lm: nn.Module, embeds: Tensor) -> Tensor | None:
    """The causal mask [b, 1, N, N] (True = attend) that SDPA would get, built directly.

    Without an attention mask, transformers 4.57 reads the position ids for packed
    sequences, which turns off its skip to SDPA's causal kernel and builds this very mask
    through `torch.vmap` on every forward (about 15 % of a tiny student's step on CPU). A 4D
    mask is passed through as is. Only for SDPA: eager attention adds its mask as floats.
    """
    if getattr(lm.config, "_attn_implementation", None) != "sdpa":
        return None
    b, n = embeds.shape[:2]
    mask = torch.ones(n, n, dtype=torch.bool, device=embeds.device).tril()
    return mask.expand(b, 1, n, n)


def _tok_name(model: AudioLLM) -> str:
    import os

    path = model.config.resolved_tokenizer_path or ""
    return os.path.basename(os.path.normpath(path)) or "tokenizer"


def _init_bert(module: nn.Module) -> None:
    """BERT initialisation (normal 0.02, zero bias, unit LayerNorm), as BLIP-2's Q-Former."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
