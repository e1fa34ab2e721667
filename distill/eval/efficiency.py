"""Latency and memory of one AudioLLM under two protocols, on CPU or CUDA.

Glossary: b batch items, s waveform samples, n prompt positions, v vocabulary.

`baseline` is the field's protocol, exactly (nota-github/audiolm-evaluator
`evaluate_efficiency_salmonn.py`): batch 1, one 10 s Gaussian-noise clip (std 1), the ASR prompt,
10 warm-up + 100 timed iterations, wall-clock timers that are *not* synchronized inside an
iteration (the GPU is synchronized only before and after each iteration, so on CUDA the TTFT
mostly measures kernel launches), TTFT = encoders + Q-Former + prompt wrap + one LLM prefill,
TPOT = ONE decode step with the KV cache, inference = TTFT + TPOT, all averaged (with the
p10, p90 and std of the timed runs beside each mean, so a report can tell noise from a gap);
memory = `torch.cuda.max_memory_allocated()`, never reset (so it includes the weights),
averaged over the timed iterations, in GiB (bytes / 1024**3). One difference we cannot avoid:
the field computes the Whisper log-mel in its data loader, outside the timer, whereas our
`AudioLLM.prepare_inputs` takes raw waveforms, so our TTFT also includes feature extraction.

`strict` synchronizes the device around every timed region, averages TPOT over
`decode_tokens` greedy decode steps, reports median, p90 and mean over runs, and resets the
peak-memory counter after loading so the weights' memory (`weights_gb`) and the peak
(`memory_gb`, which still contains the weights) are shown apart.

On CPU, memory is the process's peak RSS growth over the measurement (Linux: the peak is reset
through /proc/self/clear_refs; elsewhere `ru_maxrss`, a lower bound), and every result says
which kind of memory it holds in `memory_kind`.
"""

from __future__ import annotations

import ctypes
import gc
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from distill.contracts import SAMPLE_RATE, AudioBatch

GIB = 1024**3
ASR_PROMPT = "Recognize the speech and give me the transcription."
UNITS = {"ttft_s": "s", "tpot_s": "s", "inference_s": "s", "memory_gb": "GiB", "rtfx": "x"}


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def noise_batch(seconds: float = 10.0, *, seed: int = 0, task: str = "asr") -> AudioBatch:
    """The field's probe input: one clip of N(0, 1) noise with the ASR prompt, batch 1."""
    g = torch.Generator().manual_seed(seed)
    s = int(round(seconds * SAMPLE_RATE))
    return AudioBatch(
        waveforms=torch.randn(1, s, generator=g),
        lengths=torch.tensor([s]),
        tasks=[task],
        prompts=[ASR_PROMPT],
        answers=[""],
        ids=["noise"],
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prefill(model: nn.Module, batch: AudioBatch):
    """Encoders + Q-Former + prompt wrap + one LLM prefill. Returns (LLM output, mask [b, n])."""
    inputs = model.prepare_inputs(batch)
    mask = inputs["attention_mask"]
    out = model.llama_model(
        inputs_embeds=inputs["inputs_embeds"], attention_mask=mask, use_cache=True
    )
    return out, mask


def decode_step(model: nn.Module, token: torch.Tensor, past, mask: torch.Tensor):
    """One cached decode step for token [b, 1]. Returns (LLM output, mask [b, n + 1])."""
    mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
    out = model.llama_model(
        input_ids=token, past_key_values=past, attention_mask=mask, use_cache=True
    )
    return out, mask


def _greedy(out) -> torch.Tensor:
    return out.logits[:, -1, :].argmax(dim=-1, keepdim=True)


# ---- memory -------------------------------------------------------------------------------


def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _rss_bytes() -> int:
    kb = _proc_status_kb("VmRSS")
    if kb is not None:
        return kb * 1024
    import psutil

    return psutil.Process().memory_info().rss


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _proc_status_kb("VmHWM") is not None
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    kb = _proc_status_kb("VmHWM")
    if kb is not None:
        return kb * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes


def weights_bytes(model: nn.Module) -> int:
    """Bytes held by parameters and buffers (shared tensors counted once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.data_ptr(), t.numel())
        if t.device.type != "meta" and key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def _release_free_heap() -> None:
    """Give freed heap pages back to the OS (glibc), so RSS growth sees reused memory again."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: growth may then undercount reused memory
        pass


class _CpuMemory:
    """Peak RSS growth over a region of code, and the absolute peak RSS."""

    def __enter__(self):
        _release_free_heap()
        self.exact = _reset_peak_rss()
        self.start = _rss_bytes()
        return self

    def __exit__(self, *exc):
        self.peak = _peak_rss_bytes()
        self.growth = max(0, self.peak - self.start)
        return False

    def fields(self) -> dict:
        out = {
            "memory_gb": self.growth / GIB,
            "memory_kind": "cpu_peak_rss_growth",
            "process_peak_rss_gb": self.peak / GIB,
        }
        if not self.exact:
            out["memory_note"] = (
                "peak RSS could not be reset (no /proc/self/clear_refs): lower bound"
            )
        return out


# ---- protocols ----------------------------------------------------------------------------


def _spread(name: str, values: list[float]) -> dict:
    """p10, p90 (nearest rank) and sample std of the timed runs: the report calls a
    student/teacher ratio noise when this spread exceeds the difference."""
    ordered = sorted(values)
    last = len(ordered) - 1
    return {
        f"{name}_p10": ordered[int(round(0.1 * last))],
        f"{name}_p90": ordered[int(round(0.9 * last))],
        f"{name}_std": statistics.stdev(ordered) if len(ordered) > 1 else 0.0,
    }


def _stats(name: str, values: list[float]) -> dict:
    return {
        name: statistics.median(values),
        f"{name}_mean": statistics.fmean(values),
        **_spread(name, values),
    }


def _progress(total: int, desc: str, show: bool):
    from tqdm.auto import tqdm

    return tqdm(range(total), desc=desc, disable=not show, leave=False)


@torch.no_grad()
def measure_baseline(
    model: nn.Module,
    *,
    warmup: int = 10,
    runs: int = 100,
    clip_seconds: float = 10.0,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """The field's protocol (see module docstring). Returns means in seconds and GiB."""
    device = model_device(model)
    model.eval()
    batch = noise_batch(clip_seconds, seed=seed).to(device)
    ttfts, tpots, mems = [], [], []
    cpu_mem = _CpuMemory() if device.type != "cuda" else None
    if cpu_mem is not None:
        cpu_mem.__enter__()
    for it in _progress(warmup + runs, "efficiency[baseline]", progress):
        _sync(device)
        t0 = time.perf_counter()
        out, mask = prefill(model, batch)
        ttft = time.perf_counter() - t0
        token, past = _greedy(out), out.past_key_values
        t0 = time.perf_counter()
        decode_step(model, token, past, mask)
        tpot = time.perf_counter() - t0
        _sync(device)
        if device.type == "cuda":
            mem = torch.cuda.max_memory_allocated(device)
            torch.cuda.empty_cache()
        del out, past
        gc.collect()
        if it >= warmup:
            ttfts.append(ttft)
            tpots.append(tpot)
            if device.type == "cuda":
                mems.append(mem)
    result = {
        "protocol": "baseline",
        "prefill_positions": int(mask.shape[1]),
        "ttft_s": statistics.fmean(ttfts),
        "tpot_s": statistics.fmean(tpots),
        "inference_s": statistics.fmean(a + b for a, b in zip(ttfts, tpots)),
        **_spread("ttft_s", ttfts),
        **_spread("tpot_s", tpots),
        **_spread("inference_s", [a + b for a, b in zip(ttfts, tpots)]),
    }
    if cpu_mem is not None:
        cpu_mem.__exit__(None, None, None)
        result.update(cpu_mem.fields())
    else:
        result.update(memory_gb=statistics.fmean(mems) / GIB, memory_kind="cuda_max_allocated")
        result.update(_spread("memory_gb", [m / GIB for m in mems]))
    result["weights_gb"] = weights_bytes(model) / GIB
    result["settings"] = {
        "batch_size": 1,
        "clip_seconds": clip_seconds,
        "clip": "gaussian noise, std 1",
        "task": "asr",
        "warmup": warmup,
        "runs": runs,
        "statistic": "mean",
        "spread": "p10, p90 (nearest rank) and sample std of the timed runs",
        "timer": "time.perf_counter, not synchronized inside an iteration (as the field)",
        "tpot": "one decode step with the KV cache",
        "memory": "max_memory_allocated, never reset (includes weights)"
        if device.type == "cuda"
        else "process peak RSS growth during the measurement",
    }
    result["units"] = dict(UNITS, weights_gb="GiB", process_peak_rss_gb="GiB")
    result["device"] = describe_device(device)
    return result


@torch.no_grad()
def measure_strict(
    model: nn.Module,
    *,
    warmup: int = 10,
    runs: int = 100,
    decode_tokens: int = 32,
    clip_seconds: float = 10.0,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Synchronized timers, TPOT over `decode_tokens` steps, median/p90/mean, peak memory
    reset after loading with the weights' memory apart."""
    if decode_tokens < 1:
        raise ValueError(f"decode_tokens must be >= 1, got {decode_tokens}")
    device = model_device(model)
    model.eval()
    batch = noise_batch(clip_seconds, seed=seed).to(device)
    is_cuda = device.type == "cuda"
    if is_cuda:
        gc.collect()
        torch.cuda.empty_cache()
        _sync(device)
        weights = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        weights = weights_bytes(model)
        cpu_mem = _CpuMemory().__enter__()
    ttfts, tpots = [], []
    for it in _progress(warmup + runs, "efficiency[strict]", progress):
        _sync(device)
        t0 = time.perf_counter()
        out, mask = prefill(model, batch)
        token = _greedy(out)
        _sync(device)
        ttft = time.perf_counter() - t0
        batch_positions = mask.shape[1]
        past, steps = out.past_key_values, []
        for _ in range(decode_tokens):
            t0 = time.perf_counter()
            out, mask = decode_step(model, token, past, mask)
            token, past = _greedy(out), out.past_key_values
            _sync(device)
            steps.append(time.perf_counter() - t0)
        del out, past
        if it >= warmup:
            ttfts.append(ttft)
            tpots.append(statistics.fmean(steps))
    result = {"protocol": "strict", "prefill_positions": int(batch_positions)}
    result.update(_stats("ttft_s", ttfts))
    result.update(_stats("tpot_s", tpots))
    result.update(_stats("inference_s", [a + b for a, b in zip(ttfts, tpots)]))
    if is_cuda:
        peak = torch.cuda.max_memory_allocated(device)
        result.update(memory_gb=peak / GIB, memory_kind="cuda_max_allocated")
        result["activation_peak_gb"] = (peak - weights) / GIB
    else:
        cpu_mem.__exit__(None, None, None)
        result.update(cpu_mem.fields())
    result["weights_gb"] = weights / GIB
    result["settings"] = {
        "batch_size": 1,
        "clip_seconds": clip_seconds,
        "clip": "gaussian noise, std 1",
        "task": "asr",
        "warmup": warmup,
        "runs": runs,
        "decode_tokens": decode_tokens,
        "statistic": "median (p90 and mean alongside)",
        "spread": "p10, p90 (nearest rank) and sample std of the timed runs",
        "timer": "time.perf_counter with device synchronization around each region",
        "tpot": f"mean of {decode_tokens} greedy decode steps with the KV cache",
        "memory": "peak max_memory_allocated after a reset post-loading (weights_gb apart)"
        if is_cuda
        else "process peak RSS growth during the measurement (weights_gb = parameter bytes)",
    }
    result["units"] = dict(
        UNITS, weights_gb="GiB", activation_peak_gb="GiB", process_peak_rss_gb="GiB"
    )
    result["device"] = describe_device(device)
    return result


def timed(fn: Callable, device: torch.device) -> tuple[object, float]:
    """Run fn() between device synchronizations; (result, wall seconds)."""
    _sync(device)
    t0 = time.perf_counter()
    value = fn()
    _sync(device)
    return value, time.perf_counter() - t0


def rtfx(audio_seconds: float, processing_seconds: float) -> float:
    """Inverse real-time factor: seconds of audio processed per second of compute."""
    if processing_seconds <= 0:
        raise ValueError(f"processing time must be > 0, got {processing_seconds}")
    return audio_seconds / processing_seconds


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads)"


PROTOCOLS: dict[str, Callable[..., dict]] = {"baseline": measure_baseline, "strict": measure_strict}


def run_protocols(
    model: nn.Module,
    names: list[str],
    *,
    warmup: int = 10,
    runs: int = 100,
    decode_tokens: int = 32,
    clip_seconds: float = 10.0,
    progress: bool = True,
) -> dict[str, dict]:
    """Run the named protocols; baseline first, since it reads the never-reset CUDA peak
    that strict resets."""
    unknown = [n for n in names if n not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown efficiency protocol(s) {unknown}; choose from {list(PROTOCOLS)}")
    out = {}
    for name in sorted(names, key=list(PROTOCOLS).index):
        extra = {"decode_tokens": decode_tokens} if name == "strict" else {}
        out[name] = PROTOCOLS[name](
            model, warmup=warmup, runs=runs, clip_seconds=clip_seconds, progress=progress, **extra
        )
    return out
