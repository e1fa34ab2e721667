"""Procedural sound events with templated captions (the captioning half of the corpus).

Glossary: s  waveform samples (16 kHz).

A clip is one event, two events in sequence, or an event over background noise.
Events: steady tones, beep trains, rising and falling chirps, noise bursts, click
trains, buzzes, warbles and drum beats, with pitch classes and counts that the
captions name. Caption template 0 is the canonical target ("text"), so the target
is a function of the audio; the other templates give the extra "references".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SR = 16_000
PITCH_HZ = {"low": (180.0, 320.0), "medium": (500.0, 800.0), "high": (1500.0, 2500.0)}
NUMBERS = {2: "two", 3: "three", 4: "four", 5: "five"}

# kind -> caption templates; {p} pitch word, {n} count word, {s} speed word
TEMPLATES: dict[str, tuple[str, ...]] = {
    "tone": (
        "a {p} tone",
        "a steady {p} pitched tone",
        "a constant {p} beep",
        "a {p} tone that holds",
    ),
    "beeps": ("{n} {p} beeps", "a {p} tone beeping {n} times", "{n} short {p} beeps in a row"),
    "up": ("a rising tone", "a tone sweeping upward", "a pitch rising from low to high"),
    "down": ("a falling tone", "a tone sweeping downward", "a pitch falling from high to low"),
    "noise": ("a burst of noise", "a short hiss", "a rush of white noise"),
    "clicks": ("{s} clicks", "a {s} ticking sound", "a series of {s} clicks"),
    "buzz": ("a {p} buzz", "a harsh {p} buzzing", "an electric {p} buzz"),
    "warble": ("a warbling tone", "a wobbling siren-like tone", "a tone with vibrato"),
    "drums": ("a steady drum beat", "rhythmic thumping", "a regular pounding beat"),
}
SEQUENCE = ("{a} followed by {b}", "{a}, then {b}", "first {a} and then {b}")
OVER_NOISE = (
    "{a} over background noise",
    "{a} with a hiss in the background",
    "{a} against a noisy background",
)
KINDS = tuple(TEMPLATES)


@dataclass(frozen=True)
class Event:
    kind: str
    pitch: str = "medium"  # low / medium / high
    count: int = 3  # beeps
    speed: str = "slow"  # clicks
    seconds: float = 0.8

    def caption(self, template: int = 0) -> str:
        options = TEMPLATES[self.kind]
        return options[template % len(options)].format(
            p=self.pitch, n=NUMBERS[self.count], s=self.speed
        )


@dataclass(frozen=True)
class SoundSpec:
    """A clip: events in sequence (`layout` "single"/"sequence") or over noise ("over")."""

    events: tuple[Event, ...]
    layout: str
    seed: int

    def caption(self, template: int = 0) -> str:
        a = self.events[0].caption(template)
        if self.layout == "sequence":
            b = self.events[1].caption(template)
            return SEQUENCE[template % len(SEQUENCE)].format(a=a, b=b)
        if self.layout == "over":
            return OVER_NOISE[template % len(OVER_NOISE)].format(a=a)
        return a

    def references(self, k: int = 5) -> list[str]:
        """k distinct captions (fewer if the templates run out); the first is canonical."""
        refs: list[str] = []
        for t in range(4 * k):
            c = self.caption(t)
            c = c[0].upper() + c[1:] + "."
            if c not in refs:
                refs.append(c)
            if len(refs) == k:
                break
        return refs


def random_event(
    rng: np.random.Generator, kinds=KINDS, seconds: tuple[float, float] = (0.6, 1.4)
) -> Event:
    kind = str(rng.choice(kinds))
    return Event(
        kind=kind,
        pitch=str(rng.choice(list(PITCH_HZ))),
        count=int(rng.integers(2, 6)),
        speed=str(rng.choice(["slow", "fast"])),
        seconds=float(rng.uniform(*seconds)),
    )


def plan_sound(
    rng: np.random.Generator, seed: int, event_seconds: tuple[float, float] = (0.6, 1.4)
) -> SoundSpec:
    """Draw one clip's events and layout; each event lasts U(event_seconds) seconds."""
    layout = str(rng.choice(["single", "sequence", "over"], p=[0.4, 0.4, 0.2]))
    kinds = [k for k in KINDS if k != "noise"] if layout == "over" else KINDS
    first = random_event(rng, kinds, event_seconds)
    events = (first,)
    if layout == "sequence":
        second = random_event(rng, seconds=event_seconds)
        while second.kind == first.kind:
            second = random_event(rng, seconds=event_seconds)
        events = (first, second)
    return SoundSpec(events, layout, seed)


# ---- rendering --------------------------------------------------------------------------
def _envelope(n: int, attack: int = 160, release: int = 320) -> np.ndarray:
    env = np.ones(n)
    a, r = min(attack, n // 2), min(release, n // 2)
    env[:a] = np.linspace(0, 1, a, endpoint=False)
    env[n - r :] = np.linspace(1, 0, r)
    return env


def _sine(freq: np.ndarray | float, n: int) -> np.ndarray:
    phase = 2 * np.pi * np.cumsum(np.broadcast_to(freq, (n,))) / SR
    return np.sin(phase)


def render_event(ev: Event, rng: np.random.Generator) -> np.ndarray:
    """[s] float64 samples of one event, peak about 1."""
    n = int(ev.seconds * SR)
    lo, hi = PITCH_HZ[ev.pitch]
    f = rng.uniform(lo, hi)
    t = np.arange(n) / SR
    if ev.kind == "tone":
        x = _sine(f, n) * _envelope(n)
    elif ev.kind == "beeps":
        x = np.zeros(n)
        slot = n // ev.count
        on = int(slot * 0.6)
        for i in range(ev.count):
            x[i * slot : i * slot + on] = _sine(f, on) * _envelope(on)
    elif ev.kind in ("up", "down"):
        f0, f1 = rng.uniform(250, 450), rng.uniform(1800, 3000)
        sweep = f0 * (f1 / f0) ** (t / t[-1]) if ev.kind == "up" else f1 * (f0 / f1) ** (t / t[-1])
        x = _sine(sweep, n) * _envelope(n)
    elif ev.kind == "noise":
        x = rng.standard_normal(n) / 3 * _envelope(n, 80, 1600)
    elif ev.kind == "clicks":
        x = np.zeros(n)
        rate = rng.uniform(3, 4.5) if ev.speed == "slow" else rng.uniform(10, 14)
        click = rng.standard_normal(48) * np.exp(-np.arange(48) / 8)
        for start in (np.arange(0, ev.seconds, 1 / rate) * SR).astype(int):
            seg = x[start : start + 48]
            seg += click[: len(seg)]
    elif ev.kind == "buzz":
        x = np.sign(_sine(f / 2, n)) * 0.5 * _envelope(n)
    elif ev.kind == "warble":
        vib = f + 0.15 * f * np.sin(2 * np.pi * rng.uniform(5, 8) * t)
        x = _sine(vib, n) * _envelope(n)
    else:  # drums: decaying low thumps at a steady tempo
        x = np.zeros(n)
        period = int(SR * rng.uniform(0.2, 0.3))
        m = min(period, 2400)
        hit = _sine(np.linspace(150, 50, m), m) * np.exp(-np.arange(m) / 600)
        for start in range(0, n - m + 1, period):
            x[start : start + m] += hit
    peak = np.abs(x).max()
    return x / peak if peak > 0 else x


def render_sound(spec: SoundSpec) -> np.ndarray:
    """[s] float32 clip at 16 kHz: events with short gaps, a quiet noise floor, peak < 1."""
    rng = np.random.default_rng([spec.seed, 2])
    pad = lambda: np.zeros(int(rng.uniform(0.1, 0.3) * SR))  # noqa: E731
    parts = [pad()]
    for i, ev in enumerate(spec.events):
        if i:
            parts.append(np.zeros(int(rng.uniform(0.15, 0.4) * SR)))
        parts.append(render_event(ev, rng) * rng.uniform(0.4, 0.9))
    parts.append(pad())
    x = np.concatenate(parts)
    if spec.layout == "over":
        x = x + rng.standard_normal(len(x)) * rng.uniform(0.05, 0.12)
    x = x + rng.standard_normal(len(x)) * 10 ** (-rng.uniform(55, 70) / 20)
    return (x / max(1.0, np.abs(x).max() / 0.95)).astype(np.float32)
