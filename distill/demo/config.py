"""`DemoConfig`: sizes, budgets and the label-scarcity knob of `distill demo` and `distill study`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from distill._instantiate import ConfigError

LORA_ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


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
    # captioning clips (several references each): 100 valid and 100 test clips, so that
    # CIDEr-D's paired CIs are not +-0.3 wide as with 40
    n_sounds: int = 1000
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
    # 100 steps left CED's tags at chance (valid exact match 0.0) and the teacher's captions
    # at the mercy of the machine; 600 at 3e-3 reach exact match 0.40 (27 tags, 40 clips)
    audio_steps: int = 600
    audio_lr: float = 3e-3
    teacher_lm_width: int = 128
    teacher_qformer: int = 128
    student_qformer: int = 64
    # the student LM (the teacher's is 128 wide). At 64 every student's captions collapsed
    # onto a few frequent phrases whatever the loss or labels (valid CIDEr-D ~1.1 against the
    # teacher's 1.9, even CE-only with every label); at 96, valid split, 3 seeds, 10 % labels:
    # CE-only 7.1 % / 1.27, the best distilled arm 2.8 % / 1.56 (see arms.BEST)
    student_lm_width: int = 96
    lm_steps: int = 200
    # --- audio LLMs (Q-Former, projection and LoRA train; encoders and LM bases are frozen)
    # the teacher's quality is steep in its steps: valid 4.6 % / 1.35 after 400, 1.7 % / 1.99
    # after 500 (LoRA dropout 0, one process, the same world and encoder rows); 1.5 % / 2.06
    # after 500 data-parallel over 2 processes (the default)
    teacher_steps: int = 500
    # every student arm, CE-only included (equal steps and data). 400 cost the distilled arm
    # captioning on the valid split (mean CIDEr-D gap closed 14 % against 31 % at 500)
    student_steps: int = 500
    batch_size: int = 16
    teacher_lr: float = 3e-3
    # LoRA targets. A 2-layer LM pretrained on interchangeable words reads the bridge's tokens
    # weakly through q/v alone: the teacher's valid CE after 500 steps is 1.13 with q/v (the
    # right word at p ~ 0.25) and 0.59 with every projection, at +25 % step time
    teacher_lora: tuple[str, ...] = LORA_ALL
    student_lora: tuple[str, ...] = LORA_ALL
    # LoRA dropout (SALMONN's is 0.05). 0: on 2 CPU cores its random masks took ~20 % of a
    # student step and more of the teacher's (profiled); the teacher's valid WER / CIDEr-D
    # after 500 steps: 1.7 % / 1.80 at 0 (1.7 % / 1.99 in a rerun whose encoder rows were
    # computed live: last-digit differences move captioning by ~0.2), 2.9 % / 2.09 at 0.05
    lora_dropout: float = 0.0
    student_lr: float = 6e-3  # valid split, 3 seeds: WER of seqkd 8.1 % at 6e-3, 12.9 % at 3e-3
    ctc_weight: float = 1.0  # CTC on the Q-Former windows (every model: not distillation)
    # tasks whose answers the students' CTC aid scores (every student arm alike); the
    # teacher's aid scores ASR only
    student_ctc_tasks: tuple[str, ...] = ("asr",)
    warmup: float = 0.1  # share of the steps spent in linear warm-up, then cosine to 5 %
    second_per_window: float = 0.17  # finer Q-Former windows than SALMONN's 0.33 s: short words
    max_new_tokens: int = 24
    # drop pseudo-labels whose mean token log-probability under the teacher is below this
    # (None keeps every non-empty answer)
    pseudo_min_logprob: float | None = None
    eval_iters: int = 10  # efficiency protocol timed runs (the field uses 100)
    num_workers: int = 1
    # student runs side by side (separate processes), each with `threads` torch threads: a
    # run's numbers then do not depend on `jobs`; the tiny models gain more from two runs
    # at once than from two threads each
    jobs: int = 2
    threads: int = 1
    # the teacher trains data-parallel over this many processes (Accelerate DDP, gloo on
    # CPU; `threads` threads and batch_size / teacher_processes clips each, the same global
    # batch), as `accelerate launch --num_processes N` would: 2 processes ran its 500 steps
    # in ~75 s against ~100 s for one, where a second thread gained only ~10 %
    teacher_processes: int = 2
    # threads of a one-process teacher (teacher_processes = 1): pinned, not the core count
    world_threads: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        self.student_seeds = tuple(int(s) for s in self.student_seeds)
        self.teacher_lora = tuple(self.teacher_lora)
        self.student_lora = tuple(self.student_lora)
        self.student_ctc_tasks = tuple(self.student_ctc_tasks)
        if not 0.0 < self.student_label_fraction <= 1.0:
            raise ConfigError(
                f"student_label_fraction must be in (0, 1], got {self.student_label_fraction}"
            )
        if self.jobs < 1 or self.threads < 1:
            raise ConfigError(f"jobs and threads must be >= 1, got {self.jobs} and {self.threads}")
        if self.teacher_processes < 1 or self.batch_size % self.teacher_processes:
            raise ConfigError(
                f"teacher_processes must be >= 1 and divide batch_size ({self.batch_size}), "
                f"got {self.teacher_processes}"
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
