"""`Recipe`: one typed dataclass that says what to distil, from what, and how.

YAML only fills the dataclass. Swappable parts (student, teacher, loss) are
component nodes named by dotted path (`_component_: losses.DDAT`); `distill`
instantiates them without importing any plug-in package by name.

    recipe = Recipe.from_yaml("recipes/configs/ddat_tiny.yaml", overrides=["optim.lr=3e-4"])
    recipe.fit()        # train (resumable); writes OUTPUT/checkpoints, train_log.jsonl, model/
    recipe.evaluate()   # student (and teacher) on the test split -> OUTPUT/eval/metrics.json
    recipe.report()     # OUTPUT/report/report.{md,html}
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_type_hints

import yaml

from distill._coerce import accepts_str, coerce
from distill._instantiate import ConfigError


@dataclass
class DataConfig:
    """Where the examples come from and how they are sampled."""

    train: list[str] = field(default_factory=list)  # stage-1 SALMONN annotation JSON files
    # how much of each train file an epoch holds, e.g. [1.0, 0.5] for labels and half of the
    # pseudo-labels (a seeded subset), [1.0, 2.0] for the pseudo-labels twice; empty = 1 each
    train_weights: list[float] = field(default_factory=list)
    stage2: list[str] = field(default_factory=list)  # stage-2 files; empty = one stage
    stage2_start: int = 0  # optimizer step at which stage 2 replaces stage 1
    replay_fraction: float = 0.0  # share of stage-1 items replayed into stage 2
    valid: str | None = None  # annotation JSON for validation loss / accuracy
    test: str | None = None  # annotation or test-file JSON for `evaluate()`
    synth: dict | None = (
        None  # make the synthetic corpus (distill.data.synth kwargs) and use its splits
    )
    batch_size: int = 8  # per process and micro-batch; global = batch_size * processes * grad_accum
    num_workers: int = 0  # DataLoader workers; audio decoding is the CPU cost
    trim_fraction: float = 0.05  # drop this share of the shortest and of the longest clips
    stratify_text_length: bool = False  # balance batches over text-length deciles
    max_seconds: float = 30.0  # audio is cut here (SALMONN: 30 s)
    max_bad_fraction: float = 0.05  # fail instead of training when more items are unreadable

    def __post_init__(self) -> None:
        for name in ("train", "stage2"):
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, [value])
        _require(0.0 <= self.replay_fraction <= 1.0, "data.replay_fraction must be in [0, 1]")
        _require(
            not self.train_weights or len(self.train_weights) == len(self.train),
            f"data.train_weights has {len(self.train_weights)} entries for "
            f"{len(self.train)} data.train files",
        )
        _require(all(w >= 0 for w in self.train_weights), "data.train_weights must all be >= 0")
        _require(0.0 <= self.trim_fraction < 0.5, "data.trim_fraction must be in [0, 0.5)")
        _require(self.batch_size >= 1, "data.batch_size must be >= 1")
        _require(self.num_workers >= 0, "data.num_workers must be >= 0")
        _require(0.0 <= self.max_bad_fraction <= 1.0, "data.max_bad_fraction must be in [0, 1]")


@dataclass
class OptimConfig:
    """AdamW + linear warm-up + cosine decay (SALMONN's schedule)."""

    lr: float = 1e-4  # peak learning rate
    min_lr_ratio: float = 0.1  # cosine floor as a share of lr
    weight_decay: float = 0.05  # matrices only; 1-D, biases and norms get none
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8  # AdamW epsilon; larger values make early updates smoother in the gradient
    warmup_steps: int = 100  # without warm-up small AudioLLMs collapse to the text prior
    max_steps: int = 1000  # optimizer steps
    grad_accum: int = 1  # micro-batches per optimizer step
    clip_grad_norm: float | None = 1.0  # None disables clipping
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16", passed to accelerate
    # parameter-name prefix -> lr multiplier, the longest matching prefix winning; names are
    # `student.<name>` and `loss.<name>` (e.g. {"student.speech_Qformer": 2.0}); a prefix
    # that names no trainable parameter is an error
    lr_multipliers: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        _require(self.lr > 0, "optim.lr must be > 0")
        _require(self.eps > 0, "optim.eps must be > 0")
        _require(0.0 <= self.min_lr_ratio <= 1.0, "optim.min_lr_ratio must be in [0, 1]")
        _require(self.max_steps >= 1, "optim.max_steps must be >= 1")
        _require(self.warmup_steps >= 0, "optim.warmup_steps must be >= 0")
        _require(self.grad_accum >= 1, "optim.grad_accum must be >= 1")
        _require(
            self.mixed_precision in ("no", "bf16", "fp16"),
            f"optim.mixed_precision must be no/bf16/fp16, got {self.mixed_precision!r}",
        )


@dataclass
class TrainConfig:
    """Logging, validation and checkpoint cadence."""

    log_every: int = 10  # steps between log lines (JSONL + trackers)
    eval_every: int = 0  # steps between validation passes; 0 = only at the end
    eval_batches: int = 20  # validation batches per pass (bounded cost)
    save_every: int = 500  # steps between checkpoints; the last step is always saved
    keep_last: int = 2  # checkpoints kept on disk
    resume: str = "auto"  # "auto" (latest checkpoint if any), "never", or a checkpoint path
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])  # accelerate trackers
    progress: bool = True  # tqdm progress bar
    # keep frozen encoders' outputs per clip in memory (student and live teacher) so later
    # epochs skip Whisper/BEATs/CED; ~85 KB a clip for tiny encoders, 7.7 MB for whisper-large
    cache_frozen_features: bool = False
    # a directory written by `distill.engine.features.build_feature_store`: models whose
    # frozen encoders match a file there start with its rows (needs cache_frozen_features)
    feature_store: str | None = None
    # run the losses' value-reading input checks (NaN/inf inputs, empty masks) on every
    # micro-batch; off, the engine checks only the values it logs (no wait on the device)
    debug_checks: bool = False
    # the student hands the loss its answer hidden states and lm_head instead of logits:
    # CE, TokenKL and DDAT over TokenKL compute the logits chunk by chunk and never hold
    # [batch, answer tokens, vocab] (the memory of a 151,936-token vocabulary); other
    # losses refuse it, naming this option
    fused_head: bool = False
    # on-policy KD (GKD): this fraction of micro-batches trains on answers the student
    # samples (temperature, top_p, at most max_new_tokens), scored by the live teacher;
    # 0 is off-policy training on the labels (distill.engine.on_policy)
    on_policy_lmbda: float = 0.0
    on_policy_max_new_tokens: int = 64
    on_policy_temperature: float = 1.0
    on_policy_top_p: float = 1.0
    # the frozen teacher on N processes: "replicated" (a whole copy per process) or
    # "sharded" (wrapped by the run's FSDP plugin: each process holds 1/N of its weights,
    # no gradients, eval mode); see `distill inspect --gpus N` for the memory of each
    teacher_placement: str = "replicated"

    def __post_init__(self) -> None:
        _require(self.log_every >= 1, "train.log_every must be >= 1")
        _require(
            self.teacher_placement in ("replicated", "sharded"),
            f"train.teacher_placement must be 'replicated' or 'sharded', "
            f"got {self.teacher_placement!r}",
        )
        _require(self.save_every >= 1, "train.save_every must be >= 1")
        _require(
            self.feature_store is None or self.cache_frozen_features,
            "train.feature_store needs train.cache_frozen_features: true",
        )
        _require(
            0.0 <= self.on_policy_lmbda <= 1.0,
            f"train.on_policy_lmbda must be in [0, 1], got {self.on_policy_lmbda}",
        )
        _require(self.on_policy_max_new_tokens >= 1, "train.on_policy_max_new_tokens must be >= 1")
        _require(self.on_policy_temperature > 0, "train.on_policy_temperature must be > 0")
        _require(0 < self.on_policy_top_p <= 1, "train.on_policy_top_p must be in (0, 1]")


_DECODE_FIELDS = (
    "num_beams",
    "max_new_tokens",
    "min_length",
    "repetition_penalty",
    "length_penalty",
)


@dataclass
class EvalConfig:
    """Decoding and efficiency settings for `Recipe.evaluate`.

    The student and the teacher decode with the same settings: the `decode` preset with the
    fields below that are set; `teacher_decode` changes the teacher's only.
    """

    # "greedy" (1 beam, 64 tokens: quick, for tiny runs) or "salmonn" (SALMONN's
    # decode_config.yaml and the field's protocol: 4 beams, 200 tokens); both min_length 1
    decode: str = "greedy"
    num_beams: int | None = None  # None keeps the preset's
    max_new_tokens: int | None = None  # None keeps the preset's
    min_length: int | None = None  # 0 lets an answer be empty; None keeps the preset's (1)
    repetition_penalty: float | None = None  # None keeps the preset's (1.0)
    length_penalty: float | None = None  # None keeps the preset's (1.0)
    # the teacher's own changes: any of the fields above, `decode` included; {} = the student's
    teacher_decode: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 8
    efficiency: list[str] = field(default_factory=lambda: ["baseline", "strict"])
    warmup: int = 10  # efficiency warm-up iterations (the field's protocol: 10)
    iters: int = 100  # timed iterations (the field's protocol: 100)
    evaluate_teacher: bool = True

    def __post_init__(self) -> None:
        for role in ("student", "teacher"):
            self.decode_settings(role)  # a bad preset or field fails at load, named

    def decode_settings(self, role: str = "student"):
        """The `DecodeSettings` of the student or the teacher."""
        from distill.modeling.generation import decode_settings

        explicit = {k: getattr(self, k) for k in _DECODE_FIELDS}
        if role != "teacher" or not self.teacher_decode:
            return decode_settings(self.decode, where="eval", **explicit)
        changes = dict(self.teacher_decode)
        # the teacher's preset, if it names one, under the shared explicit fields
        preset = changes.pop("decode", self.decode)
        settings = decode_settings(preset, where="eval.teacher_decode", **explicit)
        return decode_settings(settings, where="eval.teacher_decode", **changes)


@dataclass
class Recipe:
    """A distillation run: student, teacher, losses, data, optimisation, outputs."""

    student: dict[str, Any] = field(
        default_factory=dict
    )  # component node building the student AudioLLM
    teacher: dict[str, Any] | None = None  # component node with `signals(batch)`; None = CE only
    loss: dict[str, Any] = field(default_factory=lambda: {"_component_": "losses.CE"})
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = "runs/recipe"
    seed: int = 0
    name: str = ""

    def __post_init__(self) -> None:
        for f in fields(self):
            hint = _hints(type(self))[f.name]
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(hint) and isinstance(value, dict):
                setattr(self, f.name, _build(hint, value, f.name))
        _require(bool(self.student), "recipe.student must name a component (`_component_: ...`)")
        if not self.name:
            self.name = Path(self.output_dir).name

    # ---- YAML -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], overrides: list[str] | None = None) -> Recipe:
        data = apply_overrides(dict(data or {}), overrides or [], schema=cls)
        return _build(cls, data, "recipe")

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> Recipe:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"recipe config {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML: {err}") from err
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
        try:
            return cls.from_dict(data, overrides)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["optim"]["betas"] = list(self.optim.betas)
        return out

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
        return text

    # ---- actions ----------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train the student; returns a summary (final step, last metrics, output paths)."""
        from distill.engine.trainer import Trainer

        return Trainer(self).fit()

    def evaluate(self, include_teacher: bool | None = None) -> dict[str, Any]:
        """Evaluate the trained student (and the teacher) on `data.test`."""
        from distill.engine.evaluate import evaluate_recipe

        return evaluate_recipe(self, include_teacher=include_teacher)

    def report(self, extra_runs: list[str] | None = None) -> Path:
        """Write the student-versus-teacher report into OUTPUT/report."""
        from distill.report import write_report

        runs = [str(Path(self.output_dir))] + list(extra_runs or [])
        teacher_dir = Path(self.output_dir) / "teacher"
        if (teacher_dir / "eval" / "metrics.json").is_file():
            runs.insert(0, str(teacher_dir))
        return write_report(runs, Path(self.output_dir) / "report")


# ---- helpers --------------------------------------------------------------------------
def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls, globalns=sys.modules[cls.__module__].__dict__)


def _build(cls: type, data: dict[str, Any], where: str):
    """Build dataclass `cls` from a mapping, rejecting unknown fields by name."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"unknown field(s) {', '.join(f'{where}.{k}' for k in unknown)}; "
            f"valid fields of {where}: {', '.join(sorted(known))}"
        )
    hints = _hints(cls)
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = _build(hint, value, f"{where}.{key}")
        elif not dataclasses.is_dataclass(hint):
            value = coerce(value, hint, f"{where}.{key}")
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def apply_overrides(
    data: dict[str, Any], overrides: list[str], schema: type | None = None
) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides to a nested mapping.

    The value is parsed as YAML, except where `schema` (a config dataclass) declares the
    field `str`: there the text is kept as written, so `optim.mixed_precision=no` is "no".
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        key, _, raw = item.partition("=")
        parts = key.strip().split(".")
        value = _override_value(item, raw, _hint_at(schema, parts))
        node = data
        for part in parts[:-1]:
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a mapping")
            node = node[part]
        node[parts[-1]] = value
    return data


def _override_value(item: str, raw: str, hint: Any) -> Any:
    if raw == "":
        return None
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({err})") from None
    if hint is None or not accepts_str(hint) or isinstance(value, (str, list, dict)):
        return value
    if value is None and type(None) in get_args(hint):
        return None
    return raw  # a str field: `no` and `2024` stay the text that was typed


def _hint_at(schema: type | None, parts: list[str]) -> Any:
    """The declared type of the field at `parts` under dataclass `schema`, or None."""
    hint: Any = schema
    for part in parts:
        if not dataclasses.is_dataclass(hint):
            return None
        hint = _hints(hint).get(part)
    return hint


def parse_cli_args(
    argv: list[str] | None = None, default_config: str | None = None
) -> tuple[Recipe, argparse.Namespace]:
    """`--config FILE [--evaluate] [--report] key=value ...`, as used by recipes/*.py."""
    parser = argparse.ArgumentParser(description="Run a distill recipe.")
    add_arguments(parser, default_config)
    args = parser.parse_args(argv)
    return Recipe.from_yaml(args.config, overrides=args.overrides), args


def main(argv: list[str] | None = None, default_config: str | None = None) -> int:
    """Entry point of recipes/*.py: parse the command line, fit, then evaluate/report if asked."""
    recipe, actions = parse_cli_args(argv, default_config=default_config)
    return _execute(recipe, actions)


def _execute(recipe: Recipe, actions: argparse.Namespace) -> int:
    recipe.fit()
    if actions.evaluate or actions.report:
        recipe.evaluate()
    if actions.report:
        print(f"report: {recipe.report()}")
    return 0


def add_arguments(parser: argparse.ArgumentParser, default_config: str | None = None) -> None:
    parser.add_argument(
        "--config", default=default_config, required=default_config is None, help="recipe YAML"
    )
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. optim.lr=3e-4")
    parser.add_argument("--evaluate", action="store_true", help="evaluate after training")
    parser.add_argument("--report", action="store_true", help="write the report after evaluating")


def run(args: argparse.Namespace) -> int:
    """`distill train --config FILE key=value ...`."""
    return _execute(Recipe.from_yaml(args.config, overrides=args.overrides), args)
