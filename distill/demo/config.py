"""`DemoConfig`: sizes, budgets and the label-scarcity knob of `distill demo` and `distill study`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from distill._instantiate import ConfigError


@dataclass
class DemoConfig:
    """Everything the demo's numbers depend on; `quick()` shrinks it for tests.

    `seed` fixes the world: the corpus, the labelled subset, the foundation models and the
    teacher. `student_seeds` are the seeds of the students (initialisation and batch order),
    the repeats over which the demo and the study report mean, spread and CIs.
    """

    out_dir: str = "distill_demo"
    seed: int = 0
    student_seeds: tuple[int, ...] = (0,)  # the demo's; `distill study` uses 0 1 2
    n_speech: int = 1600  # ASR clips (2-4 words from a 12-word vocabulary, 4 voices)
    n_sounds: int = 400  # captioning clips (several references each)
    corpus: dict = field(
        default_factory=lambda: {
            "vocab_size": 12,
            "max_words": 4,
            "voices": ["en", "en-us", "en-gb-x-rp", "en+m3"],
            "rate": [160, 190],
            "reverb_prob": 0.0,
            "event_seconds": [0.3, 0.7],
        }
    )
    # the tiny Whisper's fixed input window (real Whisper: 30 s); the longest clip is 2.12 s
    window_seconds: float = 2.4
    # share of the train labels the students see (distil-whisper's setting: the teacher's
    # signals cover all the audio, pseudo-labels included); the CE-only student gets the
    # same labelled subset. 1.0 is the equal-labels setting.
    student_label_fraction: float = 0.1
    # --- foundation models (pretrained once, frozen or LoRA-adapted afterwards)
    speech_width: int = 128
    speech_layers: int = 2
    speech_steps: int = 300
    audio_width: int = 64
    audio_steps: int = 100
    teacher_lm_width: int = 128
    student_lm_width: int = 64
    lm_steps: int = 200
    # --- audio LLMs (Q-Former, projection and LoRA train; encoders and LM bases are frozen)
    teacher_steps: int = 500
    student_steps: int = 600  # every student arm, CE-only included (equal steps and data)
    batch_size: int = 16
    teacher_lr: float = 3e-3
    student_lr: float = 3e-3
    ctc_weight: float = 1.0  # CTC on the Q-Former windows (every model: not distillation)
    warmup: float = 0.1  # share of the steps spent in linear warm-up, then cosine to 5 %
    second_per_window: float = 0.17  # finer Q-Former windows than SALMONN's 0.33 s: short words
    max_new_tokens: int = 24
    eval_iters: int = 10  # efficiency protocol timed runs (the field uses 100)
    num_workers: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        self.student_seeds = tuple(int(s) for s in self.student_seeds)
        if not 0.0 < self.student_label_fraction <= 1.0:
            raise ConfigError(
                f"student_label_fraction must be in (0, 1], got {self.student_label_fraction}"
            )
        if not self.student_seeds:
            raise ConfigError("student_seeds is empty: give at least one seed")

    @classmethod
    def quick(cls, **kw) -> DemoConfig:
        """Seconds-sized: for the test suite and smoke runs (numbers are meaningless)."""
        base = cls(
            n_speech=96, n_sounds=32, speech_steps=20, audio_steps=10, lm_steps=20,
            teacher_steps=20, student_steps=12, batch_size=8, eval_iters=3,
            student_label_fraction=0.5, student_seeds=(0, 1),
        )  # fmt: skip
        return replace(base, **kw)
