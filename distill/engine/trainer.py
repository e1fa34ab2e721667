"""The one training loop, on `accelerate.Accelerator`.

Flow of a step (DESIGN.md): the loader yields an `AudioBatch`; the teacher turns the
*same* batch into `TeacherSignals` (live, frozen, no grad, or replayed from a cache);
the student forward gives `ModelOutputs`; the loss composition gives a `LossOutput`;
`accelerator.backward`, clipping, AdamW, the LR schedule. Every metric is logged.

Normalisation: the engine counts the answer tokens of the whole optimizer step (all
micro-batches, all processes) before the first backward and hands each loss
`num_tokens = global_tokens / (grad_accum * processes)`. Accelerate divides each
micro-batch loss by `grad_accum` and DDP averages over processes, so the gradient is
exactly that of the token mean over the full global batch.

Host syncs: nothing on the hot path reads a tensor's value (which on a GPU waits for the
device). The token count is a host number (or, over processes, a reduced tensor the losses
divide by), the losses' value-reading input checks are off (`train.debug_checks`), metrics
stay tensors, and the engine fetches them in one `tolist()` on "fetch" steps only: logging,
validation and checkpoint steps, and the last. There it also checks that every logged value
is finite. `distill bench train` counts the syncs of a non-fetch step (goal 0).
"""

from __future__ import annotations

import inspect
import json
import math
import signal
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill._instantiate import instantiate
from distill.checks import debug_checks
from distill.contracts import AudioBatch, LossOutput
from distill.engine import checkpoint as ckpt
from distill.engine.data import build_train_stream, build_valid_loader, resolve_synth
from distill.engine.on_policy import OnPolicy, require_live_teacher, sample_answers
from distill.engine.optim import build_optimizer, build_scheduler, param_groups
from distill.engine.placement import outside_inference, place_teacher
from distill.engine.utils import (
    answer_token_count,
    flatten_for_tracker,
    needs_teacher_logits,
    required_hidden,
    token_accuracy,
)
from distill.modeling.checkpoint import CheckpointError, describe_keys, group_keys


def advance_losses(loss: nn.Module, step: int) -> None:
    """Call `on_step(step)` on every module of the loss tree that has one.

    The engine calls this once per optimizer step (after `optimizer.step()`), `step` being the
    number of optimizer steps done: stateful losses (Compose's schedules, DDAT's EMA) advance
    per optimizer step, not per micro-batch, whatever `grad_accum` is.
    """
    for module in loss.modules():
        hook = getattr(module, "on_step", None)
        if callable(hook):
            hook(step)


class NonFiniteTrainingError(FloatingPointError):
    """A logged loss term is NaN or infinite."""


class DistillStep(nn.Module):
    """Student and loss in one module, so DDP/FSDP wrap and synchronise both.

    Every forward goes through the prepared (wrapped) module, validation too
    (`evaluate=True`: the student's CE sum, correct tokens and token count), so a sharded
    student gathers its parameters the same way in both.
    """

    def __init__(
        self, student: nn.Module, loss: nn.Module, hidden: tuple[str, ...], fused: bool = False
    ):
        super().__init__()
        self.student = student
        self.loss = loss
        self.hidden = hidden
        self.fused = fused  # train.fused_head: hidden states and head instead of logits

    def forward(
        self, batch: AudioBatch, signals, num_tokens: float | torch.Tensor | None,
        evaluate: bool = False,
    ):  # fmt: skip
        if evaluate:
            return token_accuracy(self.student(batch))
        if self.fused:
            outputs = self.student(batch, hidden=self.hidden, head=True)
        else:
            outputs = self.student(batch, hidden=self.hidden)
        outputs.num_tokens = num_tokens
        outputs.sampled = bool(getattr(batch, "sampled", False))  # on-policy answers
        result = self.loss(outputs, signals)
        if not isinstance(result, LossOutput):
            raise TypeError(
                f"loss {type(self.loss).__name__} must return LossOutput, got {type(result)}"
            )
        return result.loss, result.metrics


class Trainer:
    """Runs `recipe.fit()`; one instance per process."""

    def __init__(self, recipe):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.recipe = recipe
        self.out = Path(recipe.output_dir)
        trackers = list(recipe.train.trackers or [])
        self.accelerator = Accelerator(
            # without CUDA, `accelerate launch --multi_gpu` processes only become multi-CPU
            # (gloo, gradients averaged) when Accelerate is told to use the CPU
            cpu=not torch.cuda.is_available(),
            gradient_accumulation_steps=recipe.optim.grad_accum,
            mixed_precision=recipe.optim.mixed_precision,
            log_with=trackers or None,
            project_dir=str(self.out),
        )
        set_seed(recipe.seed)
        acc = self.accelerator
        self.student = instantiate(recipe.student, config_key="student")
        self.loss = instantiate(recipe.loss, config_key="loss")
        if not isinstance(self.loss, nn.Module):
            raise TypeError(f"recipe.loss must build an nn.Module, got {type(self.loss).__name__}")
        self.teacher = instantiate(recipe.teacher, config_key="teacher") if recipe.teacher else None
        self.hidden = required_hidden(self.loss)
        if recipe.train.cache_frozen_features:
            from distill.engine.features import attach_store

            for model in (self.student, getattr(self.teacher, "model", None)):
                attach_store(model, recipe.train.feature_store)
        if self.teacher is not None:
            if hasattr(self.teacher, "hidden"):
                self.teacher.hidden = tuple(sorted(set(self.teacher.hidden) | set(self.hidden)))
            if getattr(self.teacher, "logits", None) is True and not needs_teacher_logits(
                self.loss
            ):
                self.teacher.logits = False  # features-only losses: skip the teacher's LLM
            if hasattr(self.teacher, "to_device"):
                self.teacher.to_device(acc.device)
            place_teacher(acc, self.teacher, recipe.train.teacher_placement)
        named = [(f"student.{n}", p) for n, p in self.student.named_parameters()]
        named += [(f"loss.{n}", p) for n, p in self.loss.named_parameters()]
        o = recipe.optim
        groups = param_groups(
            named, lr=o.lr, weight_decay=o.weight_decay, lr_multipliers=o.lr_multipliers
        )
        fused = self.recipe.train.fused_head
        if fused and "head" not in inspect.signature(self.student.forward).parameters:
            raise ValueError(
                f"train.fused_head: true needs a student whose forward takes head=True; "
                f"{type(self.student).__name__} does not"
            )
        self.step_module = DistillStep(self.student, self.loss, self.hidden, fused)
        t = recipe.train
        self.on_policy = OnPolicy(
            t.on_policy_lmbda,
            t.on_policy_max_new_tokens,
            t.on_policy_temperature,
            t.on_policy_top_p,
        )
        if self.on_policy.enabled:
            require_live_teacher(self.teacher)
            if not hasattr(self.student, "generate"):
                raise ValueError(
                    f"train.on_policy_lmbda > 0 needs a student that can generate; "
                    f"{type(self.student).__name__} has no generate()"
                )
        optimizer = build_optimizer(groups, betas=o.betas, eps=o.eps)
        self.step_module, self.optimizer = acc.prepare(self.step_module, optimizer)
        # per step, walking every module of the wrapped model (to unwrap it, or to list its
        # parameters for clipping) cost ~3 % of a small model's step; both are fixed now
        self._unwrapped_student = acc.unwrap_model(self.step_module).student
        self._clip_params = list(self.step_module.parameters())
        self.scheduler = build_scheduler(
            optimizer,
            warmup_steps=o.warmup_steps,
            total_steps=o.max_steps,
            min_ratio=o.min_lr_ratio,
        )
        if acc.is_main_process:
            resolve_synth(recipe)  # builds the synthetic corpus once
        acc.wait_for_everyone()
        resolve_synth(recipe)  # the others reuse the finished corpus (cache hit)
        self.stream = build_train_stream(
            recipe, rank=acc.process_index, world_size=acc.num_processes
        )
        self.data_summary = self.stream.summary()
        self.valid_loader = build_valid_loader(
            recipe, rank=acc.process_index, world_size=acc.num_processes
        )
        self.step = 0
        self._stop = False

    # ---- state ------------------------------------------------------------------------
    def _tensors(self) -> dict[str, torch.Tensor]:
        """What a checkpoint keeps: the student's trainable state and the loss's state.

        Read through `accelerator.get_state_dict`, which every process calls: a sharded
        (FSDP, ZeRO-3) model is gathered whole there. The keys are DistillStep's:
        `student.*` and `loss.*`.
        """
        acc = self.accelerator
        full = acc.get_state_dict(self.step_module)
        student = acc.unwrap_model(self.step_module).student
        frozen = {f"student.{n}" for n, p in student.named_parameters() if not p.requires_grad}
        if not hasattr(student, "trainable_state_dict"):
            frozen = set()
        return {k: v for k, v in (full or {}).items() if k not in frozen}

    def _optimizer_state(self) -> dict:
        """The optimizer's state keyed by parameter name (`student.*`, `loss.*`), whole.

        `torch.distributed.checkpoint`'s `get_optimizer_state_dict` with a full state dict:
        every process calls it, an FSDP-sharded state is gathered (to the CPU), and a plain
        or DDP model gives its own state under the same names. Names, not positions, so a
        checkpoint names what does not fit on resume.
        """
        from accelerate.utils import DistributedType
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            raise NotImplementedError(
                "checkpoints under DeepSpeed are not supported: its engine owns the "
                "optimizer state (accelerator.save_state); use FSDP or DDP"
            )
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_optimizer_state_dict(self.step_module, self._torch_optimizer, options=options)

    @property
    def _torch_optimizer(self) -> torch.optim.Optimizer:
        return getattr(self.optimizer, "optimizer", self.optimizer)

    def _load_optimizer_state(self, path: Path, state: dict) -> None:
        """Restore `_optimizer_state` (or a pre-name checkpoint's positional state)."""
        from accelerate.utils import DistributedType
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        saved = state.get("state", {})
        if any(isinstance(k, int) for k in saved):  # written before states were named
            self.optimizer.load_state_dict(state)
            return
        mine = {n for g in state.get("param_groups", []) for n in g.get("params", [])}
        names = {
            n.removeprefix("module.")
            for n, p in self.step_module.named_parameters()
            if p.requires_grad
        }
        if self.accelerator.distributed_type != DistributedType.FSDP and mine != names:
            lacks, extra = sorted(names - mine), sorted(mine - names)
            raise CheckpointError(
                f"optimizer state in {path} does not fit this run: {len(extra)} parameters "
                f"it has that this run does not train ({describe_keys(group_keys(extra))}), "
                f"{len(lacks)} this run trains that it lacks "
                f"({describe_keys(group_keys(lacks))})"
            )
        sharded = self.accelerator.distributed_type == DistributedType.FSDP
        options = StateDictOptions(full_state_dict=sharded)
        set_optimizer_state_dict(self.step_module, self._torch_optimizer, state, options=options)

    def save(self) -> Path:
        acc = self.accelerator
        root = self.out / "checkpoints"
        tmp = ckpt.step_dir(root, self.step).with_name(f"step_{self.step:06d}.tmp")
        if acc.is_main_process:
            ckpt.begin_save(root, self.step)
        acc.wait_for_everyone()
        ckpt.write_rank_rng(tmp, acc.process_index)
        state = {
            "step": self.step,
            "data": self.stream.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": ckpt.rng_state(),
            "recipe": self.recipe.name,
        }
        tensors = self._tensors()
        optimizer_state = self._optimizer_state()
        acc.wait_for_everyone()
        if acc.is_main_process:
            ckpt.write_main(tmp, tensors=tensors, optimizer_state=optimizer_state, state=state)
            ckpt.finish_save(root, self.step, keep_last=self.recipe.train.keep_last)
        acc.wait_for_everyone()
        return ckpt.step_dir(root, self.step)

    def maybe_resume(self) -> None:
        mode = self.recipe.train.resume
        if mode == "never":
            return
        path = ckpt.latest_checkpoint(self.out / "checkpoints") if mode == "auto" else Path(mode)
        if path is None:
            return
        data = ckpt.load_checkpoint(path, rank=self.accelerator.process_index)
        student_sd = {k[8:]: v for k, v in data["tensors"].items() if k.startswith("student.")}
        loss_sd = {k[5:]: v for k, v in data["tensors"].items() if k.startswith("loss.")}
        student = self.accelerator.unwrap_model(self.step_module).student
        extra = [k for k in student_sd if k not in student.state_dict()]
        if extra:
            raise CheckpointError(
                f"checkpoint {path} does not fit this student: {len(extra)} student keys it "
                f"lacks: {describe_keys(group_keys(extra))}"
            )
        student.load_state_dict(student_sd, strict=False)
        self.loss.load_state_dict(loss_sd, strict=True)
        self._load_optimizer_state(path, data["optimizer"])
        state = data["state"]
        self.scheduler.load_state_dict(state["scheduler"])
        self.stream.load_state_dict(state["data"])
        ckpt.set_rng_state(state["rng"])
        if data["torch_rng"] is not None:
            ckpt.set_torch_rng_state(data["torch_rng"])
        self.step = int(state["step"])
        self._truncate_log()
        self.accelerator.print(f"resumed from {path} at step {self.step}")

    # ---- logging ----------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.out / "train_log.jsonl"

    def _truncate_log(self) -> None:
        if not self.accelerator.is_main_process or not self.log_path.is_file():
            return
        keep = [
            line
            for line in self.log_path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= self.step
        ]
        self.log_path.write_text("".join(line + "\n" for line in keep))

    def _log(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            with self.log_path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
        if self.recipe.train.trackers:
            self.accelerator.log(
                {k: v for k, v in record.items() if k != "step"}, step=record["step"]
            )

    # ---- loop -------------------------------------------------------------------------
    def _on_sigterm(self, signum, frame) -> None:
        self._stop = True

    def _signals(self, batch: AudioBatch):
        if self.teacher is None:
            return None
        with torch.inference_mode():
            signals = self.teacher.signals(batch)
        return outside_inference(signals)

    def fit(self) -> dict[str, Any]:
        acc, r = self.accelerator, self.recipe
        self.out.mkdir(parents=True, exist_ok=True)
        if acc.is_main_process:
            r.to_yaml(self.out / "config.yaml")
            (self.out / "data_summary.json").write_text(json.dumps(self.data_summary, indent=1))
        if r.train.trackers:
            acc.init_trackers(r.name or "distill", config=flatten_for_tracker(r.to_dict()))
        self.maybe_resume()
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            return self._loop()
        finally:
            signal.signal(signal.SIGTERM, previous)
            if r.train.trackers:
                acc.end_training()

    def _loop(self) -> dict[str, Any]:
        from tqdm.auto import tqdm

        acc, r = self.accelerator, self.recipe
        grad_accum, world = r.optim.grad_accum, acc.num_processes
        bar = tqdm(
            total=r.optim.max_steps,
            initial=self.step,
            desc=r.name or "train",
            unit="step",
            disable=not (r.train.progress and acc.is_main_process),
            dynamic_ncols=True,
        )
        self.step_module.train()
        last: dict[str, Any] = {}
        window_start, window_items = time.perf_counter(), 0
        run_start, run_items = time.perf_counter(), 0  # for the progress bar's throughput
        while self.step < r.optim.max_steps:
            batches = [self.stream.next(self.step) for _ in range(grad_accum)]
            fetch = self._is_fetch_step(self.step + 1) or (world == 1 and self._stop)
            record = self.train_step(batches, fetch=fetch)
            window_items += sum(len(b) for b in batches)
            run_items += sum(len(b) for b in batches) * world
            bar.update(1)
            if record is not None:
                if self._is_log_step(self.step):
                    elapsed = time.perf_counter() - window_start
                    record["items_per_s"] = window_items * world / max(elapsed, 1e-9)
                    window_start, window_items = time.perf_counter(), 0
                    self._log(record)
                bar.set_postfix(self._postfix(record, run_items, run_start), refresh=False)
                last = record
            if r.train.eval_every and self.step % r.train.eval_every == 0:
                self._log({"step": self.step, **self.validate()})
            # one process: the SIGTERM flag is a host bool, read every step; several: they
            # agree on it (a collective and a wait) on fetch steps only
            stop = self._stop
            if world > 1:
                stop = False
                if fetch:
                    flag = torch.tensor(float(self._stop), device=acc.device)
                    stop = bool(acc.reduce(flag, "sum").item())
            if stop or self.step % r.train.save_every == 0 or self.step == r.optim.max_steps:
                self.save()
            if stop:
                bar.close()
                acc.print(f"SIGTERM: saved step {self.step} and stopped cleanly")
                return {"step": self.step, "stopped": "sigterm", "last": last}
        bar.close()
        if self.valid_loader is not None:
            last_valid = self.validate()
            self._log({"step": self.step, **last_valid})
            last.update(last_valid)
        self._save_final()
        return {"step": self.step, "last": last, "output_dir": str(self.out)}

    def _is_log_step(self, step: int) -> bool:
        t = self.recipe.train
        return step % t.log_every == 0 or step == 1 or step == self.recipe.optim.max_steps

    def _is_fetch_step(self, step: int) -> bool:
        """Whether optimizer step `step` (1-based) reads its metrics back from the device."""
        t = self.recipe.train
        return (
            self._is_log_step(step)
            or step % t.save_every == 0
            or bool(t.eval_every and step % t.eval_every == 0)
        )

    @staticmethod
    def _postfix(record: dict[str, Any], items: int, since: float) -> dict[str, str]:
        """Progress-bar fields: loss, up to three loss terms, lr and items per second."""
        out = {"loss": f"{record['loss']:.4f}"}
        terms = [k for k in record if "/" in k and not k.endswith(("/loss", "/weight"))]
        for key in terms[:3]:
            out[key.split("/")[-1] if key.count("/") == 1 else key] = f"{record[key]:.3g}"
        out["lr"] = f"{record['lr']:.2e}"
        out["it/s"] = f"{items / max(time.perf_counter() - since, 1e-9):.1f}"
        return out

    def train_step(self, batches: list[AudioBatch], fetch: bool = True) -> dict[str, Any] | None:
        """One optimizer step over `grad_accum` micro-batches.

        Returns the log record (metrics averaged over micro-batches and processes, checked
        finite) when `fetch`, else None: a non-fetch step never reads a tensor's value.
        """
        acc, r = self.accelerator, self.recipe
        grad_accum, world = len(batches), acc.num_processes
        if grad_accum != acc.gradient_accumulation_steps:
            raise ValueError(
                f"train_step got {grad_accum} micro-batches; optim.grad_accum is "
                f"{acc.gradient_accumulation_steps}"
            )
        student = self._unwrapped_student
        sampled = 0
        if self.on_policy.enabled:  # the student answers some micro-batches itself (GKD)
            batches = list(batches)
            for i, b in enumerate(batches):
                if self.on_policy.draws(r.seed, self.step, i):
                    batches[i] = sample_answers(student, b.to(acc.device), self.on_policy)
                    sampled += 1
        local = sum(answer_token_count(student, b) or 0 for b in batches)  # host ints
        num_tokens: float | torch.Tensor | None = None
        if world == 1:
            num_tokens = local / grad_accum if local else None
        elif hasattr(student, "count_answer_tokens"):  # the same on every process
            # a collective, not a wait: the losses divide by the reduced tensor
            total = acc.reduce(torch.tensor(float(local), device=acc.device), "sum")
            num_tokens = total / (grad_accum * world)
        loss_sum, metric_sums = None, {}
        with debug_checks(r.train.debug_checks):
            for batch in batches:
                batch = batch.to(acc.device)
                # Accelerate skips the gradient all-reduce until the last micro-batch
                with acc.accumulate(self.step_module):
                    signals = self._signals(batch)
                    loss, metrics = self.step_module(batch, signals, num_tokens)
                    acc.backward(loss)
                loss = loss.detach()
                loss_sum = loss if loss_sum is None else loss_sum + loss
                for k, v in metrics.items():
                    metric_sums[k] = v if k not in metric_sums else metric_sums[k] + v
        packed = self._pack(loss_sum, metric_sums) if fetch else None
        grad_norm = None
        if r.optim.clip_grad_norm:
            grad_norm = acc.clip_grad_norm_(self._clip_params, r.optim.clip_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        advance_losses(self.loss, self.step)
        if packed is None:
            return None
        names, values = packed
        # every term is normalised by the global token count, so the mean over
        # processes of each process's micro-batch average is the global value
        values = (acc.reduce(values, "mean") / grad_accum).tolist()  # the one wait
        record = {"step": self.step, "loss": values[0], "lr": self.scheduler.get_last_lr()[0]}
        record.update(dict(zip(names, values[1:])))
        bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise NonFiniteTrainingError(
                f"step {self.step}: {', '.join(bad)} not finite; the checkpoints before this "
                "step are intact. Rerun from the last one with train.debug_checks: true to "
                "find the input that went wrong"
            )
        if grad_norm is not None:
            record["grad_norm"] = float(grad_norm)
        if self.on_policy.enabled:
            record["on_policy"] = sampled / grad_accum  # this step's sampled fraction
        return record

    def _pack(self, loss_sum, metric_sums: dict) -> tuple[list[str], torch.Tensor]:
        """Metric names and one fp32 tensor of [loss, *metrics] on the device."""
        device = self.accelerator.device
        names = sorted(k for k in metric_sums if k != "loss")
        parts = [loss_sum] + [metric_sums[k] for k in names]
        values = torch.stack(
            [torch.as_tensor(v, device=device).detach().float().reshape(()) for v in parts]
        )
        return names, values

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Student CE and token accuracy on (a bounded number of) validation batches."""
        if self.valid_loader is None:
            return {}
        acc = self.accelerator
        self.step_module.eval()
        totals = torch.zeros(3, device=acc.device)  # ce sum, correct, tokens
        for i, batch in enumerate(self.valid_loader):
            if i >= self.recipe.train.eval_batches:
                break
            ce_sum, correct, count = self.step_module(
                batch.to(acc.device), None, None, evaluate=True
            )
            totals += torch.stack([ce_sum, correct, count]).to(totals)
        self.step_module.train()
        totals = acc.reduce(totals, "sum")
        n = max(float(totals[2]), 1.0)
        return {"valid/ce": float(totals[0]) / n, "valid/token_acc": float(totals[1]) / n}

    def _save_final(self) -> None:
        acc = self.accelerator
        acc.wait_for_everyone()
        if not acc.is_main_process:
            return
        student = acc.unwrap_model(self.step_module).student
        if hasattr(student, "save_pretrained"):
            student.save_pretrained(self.out / "model")
        from safetensors.torch import save_file

        loss_state = {k: v.detach().contiguous().cpu() for k, v in self.loss.state_dict().items()}
        if loss_state:
            save_file(loss_state, self.out / "loss.safetensors")
