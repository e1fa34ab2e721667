"""Synthetic speech: short phrases from a small vocabulary, spoken by espeak-ng.

Glossary: s  waveform samples.

espeak-ng comes from the `espeakng-loader` wheel, which ships `libespeak-ng.so` and
`espeak-ng-data` but no binary; we drive the C API through ctypes (facts from
espeak-ng `src/include/espeak-ng/speak_lib.h`): `espeak_Initialize(output, buflength,
path, options)` with output AUDIO_OUTPUT_SYNCHRONOUS (2) returns the sample rate
(22050 Hz), `path` is the folder holding `espeak-ng-data`; `espeak_SetSynthCallback`
receives int16 buffers `(short *wav, int numsamples, espeak_EVENT *events)`;
`espeak_SetParameter(espeakRATE=1 | espeakPITCH=3, value, 0)`; `espeak_Synth(text,
size, 0, POS_CHARACTER=1, 0, espeakCHARS_UTF8=1, NULL, NULL)`; voices by name with
variants ("en-us+f3"); `espeak_ng_SetRandSeed(long)` seeds its noise generator.

Determinism: the wave generator keeps static state (glottal phase, resonators, flutter)
from one utterance to the next that no API call resets, so the same text gives
different bytes depending on what was spoken before. Clips are therefore synthesized
in fixed chunks, each in a fresh forked process (Pool with maxtasksperchild=1) that
has never spoken before: the output is a pure function of the chunk's specs.
The parent process must never load espeak itself (a fork would inherit its state).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# A small vocabulary of acoustically distinct words; a tiny model can learn it
# (REFERENCE.md: 2-5 word phrases from 20 words).
WORDS = (
    "red", "blue", "green", "yellow", "black", "white", "big", "small", "cat", "dog",
    "bird", "fish", "ball", "car", "tree", "house", "sun", "moon", "run", "jump",
    "sit", "stop", "open", "close", "one", "two", "three", "four", "five", "six",
    "up", "down", "left", "right", "fast", "slow", "hot", "cold", "yes", "no",
)  # fmt: skip
VOICES = (
    "en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc",
    "en-us+f3", "en+m3", "en-gb-x-rp+f2", "en-us+m5",
)  # fmt: skip
CHUNK_SIZE = 64  # clips per fresh espeak process; part of the corpus identity
ESPEAK_RATE = 22050

_AUDIO_OUTPUT_SYNCHRONOUS, _POS_CHARACTER, _CHARS_UTF8 = 2, 1, 1
_ESPEAK_RATE_PARAM, _ESPEAK_PITCH_PARAM = 1, 3


@dataclass(frozen=True)
class SpeechSpec:
    """One clip to speak: text, voice, words per minute, base pitch (0-100), noise seed."""

    text: str
    voice: str
    rate: int
    pitch: int
    seed: int


def make_phrases(
    n: int,
    rng: np.random.Generator,
    *,
    vocab_size: int = 24,
    min_words: int = 2,
    max_words: int = 5,
) -> list[str]:
    """`n` phrases of min_words..max_words distinct words from the first `vocab_size` WORDS."""
    if not 1 <= vocab_size <= len(WORDS):
        raise ValueError(f"vocab_size must be in [1, {len(WORDS)}], got {vocab_size}")
    if not 1 <= min_words <= max_words <= vocab_size:
        raise ValueError(
            f"need 1 <= min_words <= max_words <= vocab_size, got {min_words}, {max_words}"
        )
    out = []
    for _ in range(n):
        k = int(rng.integers(min_words, max_words + 1))
        out.append(" ".join(WORDS[i] for i in rng.choice(vocab_size, size=k, replace=False)))
    return out


class Espeak:
    """The espeak-ng library in this process (one per process: the C API is global)."""

    _instance: Espeak | None = None

    def __init__(self) -> None:
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data_parent = os.path.dirname(espeakng_loader.get_data_path())
        self.lib.espeak_Initialize.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int,
        ]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        self.sample_rate = self.lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, data_parent.encode(), 0
        )
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed for data in {data_parent}")
        self.pid = os.getpid()
        self._chunks: list[np.ndarray] = []
        proto = ctypes.CFUNCTYPE(
            ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
        )
        self._callback = proto(self._on_audio)  # keep a reference: C holds only the pointer
        self.lib.espeak_SetSynthCallback(self._callback)

    @classmethod
    def get(cls) -> Espeak:
        if cls._instance is None:
            cls._instance = cls()
        elif cls._instance.pid != os.getpid():
            raise RuntimeError(
                "espeak-ng was loaded in the parent process before forking; its synthesis state "
                "leaked into this worker, so the corpus would not be reproducible"
            )
        return cls._instance

    def _on_audio(self, wav, n: int, events) -> int:
        if wav and n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # 0 = continue synthesis

    def speak(self, spec: SpeechSpec) -> np.ndarray:
        """int16 samples [s] at `self.sample_rate` (22050 Hz)."""
        if self.lib.espeak_SetVoiceByName(spec.voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {spec.voice!r}")
        self.lib.espeak_SetParameter(_ESPEAK_RATE_PARAM, int(spec.rate), 0)
        self.lib.espeak_SetParameter(_ESPEAK_PITCH_PARAM, int(spec.pitch), 0)
        self.lib.espeak_ng_SetRandSeed(int(spec.seed) & 0x7FFFFFFF)
        self._chunks = []
        text = spec.text.encode("utf-8") + b"\0"
        err = self.lib.espeak_Synth(text, len(text), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed with code {err} for {spec.text!r}")
        self.lib.espeak_Synchronize()
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


def _speak_chunk(specs: Sequence[SpeechSpec]) -> list[np.ndarray]:
    """Worker: speak one chunk in this (fresh) process."""
    engine = Espeak.get()
    return [engine.speak(s) for s in specs]


# ---- post-processing (numpy only: workers are forked and must not touch torch) ---------
def _resample_table(up: int, down: int, half_width: int) -> np.ndarray:
    """Polyphase windowed-sinc table [up, 2 * half_width] for rate change up/down."""
    cutoff = 0.5 * min(1.0, up / down) * 0.95  # cycles per input sample, below the new Nyquist
    frac = np.arange(up)[:, None] / up
    tau = frac + half_width - 1 - np.arange(2 * half_width)[None, :]  # input offsets
    window = np.where(np.abs(tau) < half_width, 0.5 * (1 + np.cos(np.pi * tau / half_width)), 0.0)
    return 2 * cutoff * np.sinc(2 * cutoff * tau) * window


def resample_np(x: np.ndarray, orig: int, new: int, half_width: int = 12) -> np.ndarray:
    """Resample [s] float64 with a polyphase windowed sinc; elementwise, so bit-reproducible."""
    g = np.gcd(orig, new)
    up, down = new // g, orig // g
    table = _resample_table(up, down, half_width)
    n_out = -(-len(x) * up // down)
    num = np.arange(n_out, dtype=np.int64) * down
    base, phase = num // up, num % up
    xp = np.concatenate([np.zeros(half_width), x, np.zeros(half_width + 1)])
    out = np.zeros(n_out)
    for k in range(2 * half_width):
        out += xp[base + 1 + k] * table[phase, k]
    return out


def augment_speech(x: np.ndarray, rng: np.random.Generator, *, reverb_prob: float = 0.3,
                   snr_db: tuple[float, float] = (15.0, 35.0), sample_rate: int = 16_000) -> np.ndarray:  # fmt: skip
    """Silence around the speech, random level, optional synthetic reverberation, additive noise."""
    lead, tail = (np.zeros(int(rng.uniform(0.0, 0.15) * sample_rate)) for _ in range(2))
    x = np.concatenate([lead, x, tail])
    if rng.random() < reverb_prob:
        rt60 = rng.uniform(0.15, 0.5)
        n = int(rt60 * sample_rate)
        ir = rng.standard_normal(n) * np.exp(-6.9 * np.arange(n) / n) * rng.uniform(0.05, 0.2)
        ir[0] = 1.0
        m = len(x) + n - 1
        size = 1 << (m - 1).bit_length()
        x = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(ir, size), size)[: len(x) + n // 4]
    x = x / max(np.abs(x).max(), 1e-9) * rng.uniform(0.3, 0.9)
    rms = np.sqrt(np.mean(x**2)) + 1e-12
    noise_rms = rms / 10 ** (rng.uniform(*snr_db) / 20)
    x = x + rng.standard_normal(len(x)) * noise_rms
    return np.clip(x, -1.0, 1.0)


def render_speech_chunk(job: tuple[list[SpeechSpec], list[str], int, float]) -> list[float]:
    """Worker: speak, resample to `sample_rate`, augment and write FLAC; returns durations (s)."""
    import soundfile as sf

    specs, paths, sample_rate, reverb_prob = job
    durations = []
    for spec, path, raw in zip(specs, paths, _speak_chunk(specs)):
        if raw.size == 0:
            raise RuntimeError(f"espeak produced no audio for {spec}")
        x = resample_np(raw.astype(np.float64) / 32768.0, Espeak.get().sample_rate, sample_rate)
        x = augment_speech(x, np.random.default_rng([spec.seed, 1]), reverb_prob=reverb_prob,
                           sample_rate=sample_rate)  # fmt: skip
        sf.write(path, x.astype(np.float32), sample_rate, format="FLAC", subtype="PCM_16")
        durations.append(len(x) / sample_rate)
    return durations
