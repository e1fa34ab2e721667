"""Whisper speech encoder with its log-mel front end, in torch.

Glossary: b batch, s samples (16 kHz), m mel bins, f mel frames (100/s), t encoder frames (50/s), d width.

The front end reproduces `transformers.WhisperFeatureExtractor`: each waveform is
zero-padded (or cut) to the encoder's fixed input window, a 400-point Hann STFT with
hop 160 gives power spectra, a Slaney mel filterbank (80 or 128 bins) maps them to
mels, then log10 with a floor at (max - 8) and the affine (x + 4) / 4. The window is
`2 * max_source_positions` frames: 3000 frames = 30 s for real Whisper, shorter for
tiny test encoders. The encoder is the HF `WhisperEncoder` (SALMONN's `speech_encoder`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import WhisperConfig
from transformers.audio_utils import mel_filter_bank
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from distill.contracts import SAMPLE_RATE

N_FFT = 400
HOP = 160


class LogMel(nn.Module):
    """Whisper's log-mel spectrogram of a fixed-length window.

    Args:
        n_mels: 80 (Whisper up to large-v2) or 128 (large-v3, v3-turbo).
        num_frames: frames of the fixed input window (3000 for 30 s).
    """

    def __init__(self, n_mels: int = 80, num_frames: int = 3000) -> None:
        super().__init__()
        self.n_mels = n_mels
        self.num_frames = num_frames
        fb = mel_filter_bank(
            num_frequency_bins=1 + N_FFT // 2,
            num_mel_filters=n_mels,
            min_frequency=0.0,
            max_frequency=SAMPLE_RATE / 2,
            sampling_rate=SAMPLE_RATE,
            norm="slaney",
            mel_scale="slaney",
        )
        # Buffers are non-persistent: they are a pure function of (n_mels, num_frames).
        self.register_buffer("filters", torch.from_numpy(fb).float(), persistent=False)  # [freq, m]
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)

    @property
    def num_samples(self) -> int:
        return self.num_frames * HOP

    def forward(self, waveforms: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Log-mel features.

        Args:
            waveforms: [b, s] float waveforms at 16 kHz.
            lengths: [b] valid samples; samples past them are zeroed first, so a batch gives
                the same features as each item alone.

        Returns:
            [b, m, f] with f = num_frames, float32.
        """
        # Always float32: the model may run in bf16, the front end must not.
        x = waveforms.float()
        if lengths is not None:
            keep = (
                torch.arange(x.shape[1], device=x.device)[None, :] < lengths.to(x.device)[:, None]
            )
            x = x * keep
        n = self.num_samples
        x = x[:, :n] if x.shape[1] >= n else nn.functional.pad(x, (0, n - x.shape[1]))
        spec = torch.stft(
            x, N_FFT, HOP, window=self.window.float(), center=True, return_complex=True
        )
        power = spec[..., :-1].abs() ** 2  # [b, freq, f]; Whisper drops the last frame
        mel = torch.einsum("bqf,qm->bmf", power, self.filters.float())
        logmel = mel.clamp(min=1e-10).log10()
        peak = logmel.amax(dim=(1, 2), keepdim=True)
        logmel = torch.maximum(logmel, peak - 8.0)
        return (logmel + 4.0) / 4.0


def whisper_config_from(path: str | None, config: dict | None) -> WhisperConfig:
    """The `WhisperConfig` of a local model dir, or one built from kwargs."""
    if path is not None:
        return WhisperConfig.from_pretrained(path, local_files_only=True)
    return WhisperConfig(**(config or {}))


def build_whisper_encoder(
    path: str | None, config: dict | None, *, load_weights: bool = True
) -> WhisperEncoder:
    """The HF Whisper encoder (SALMONN's `speech_encoder`).

    Args:
        path: local Whisper model dir (weights loaded with `local_files_only`), or None.
        config: WhisperConfig kwargs for random init when `path` is None.
        load_weights: False builds from the config only (used for meta-device builds).
    """
    if path is not None and load_weights:
        from transformers import WhisperModel

        try:
            return WhisperModel.from_pretrained(path, local_files_only=True).encoder
        except OSError as err:
            raise FileNotFoundError(
                f"cannot load Whisper from whisper_path={path!r}: {err}"
            ) from err
    cfg = whisper_config_from(path, config)
    return WhisperEncoder(cfg)


def build_log_mel(encoder_config: WhisperConfig) -> LogMel:
    """The front end that matches an encoder: its mel bins and 2 * max_source_positions frames."""
    return LogMel(encoder_config.num_mel_bins, 2 * encoder_config.max_source_positions)


def whisper_frames_per_second(encoder_config: WhisperConfig) -> float:
    """Encoder frames per second: t / window seconds (50 for every Whisper size)."""
    seconds = 2 * encoder_config.max_source_positions * HOP / SAMPLE_RATE
    return encoder_config.max_source_positions / seconds


def speech_frame_lengths(lengths: Tensor, encoder_config: WhisperConfig) -> Tensor:
    """[b] number of encoder frames that cover real audio (ceil of samples at 50 frames/s)."""
    samples_per_frame = SAMPLE_RATE / whisper_frames_per_second(encoder_config)
    frames = torch.ceil(lengths.double() / samples_per_frame).long()
    return frames.clamp(max=encoder_config.max_source_positions)
