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
"""

from __future__ import annotations

import json
import signal
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill._instantiate import instantiate
from distill.contracts import AudioBatch, LossOutput
from distill.engine import checkpoint as ckpt
from distill.engine.data import build_train_stream, build_valid_loader, resolve_synth
from distill.engine.optim import build_optimizer, build_scheduler, param_groups
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


class DistillStep(nn.Module):
    """Student and loss in one module, so DDP/FSDP wrap and synchronise both."""

    def __init__(self, student: nn.Module, loss: nn.Module, hidden: tuple[str, ...]):
        super().__init__()
        self.student = student
        self.loss = loss
        self.hidden = hidden

    def forward(self, batch: AudioBatch, signals, num_tokens: float | None):
        outputs = self.student(batch, hidden=self.hidden)
        outputs.num_tokens = num_tokens
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
        named = [(f"student.{n}", p) for n, p in self.student.named_parameters()]
        named += [(f"loss.{n}", p) for n, p in self.loss.named_parameters()]
        o = recipe.optim
        groups = param_groups(
            named, lr=o.lr, weight_decay=o.weight_decay, lr_multipliers=o.lr_multipliers
        )
        self.step_module = DistillStep(self.student, self.loss, self.hidden)
        optimizer = build_optimizer(groups, betas=o.betas, eps=o.eps)
        self.step_module, self.optimizer = acc.prepare(self.step_module, optimizer)
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
        student = self.accelerator.unwrap_model(self.step_module).student
        if hasattr(student, "trainable_state_dict"):
            tensors = {f"student.{k}": v for k, v in student.trainable_state_dict().items()}
        else:
            tensors = {f"student.{k}": v for k, v in student.state_dict().items()}
        tensors.update({f"loss.{k}": v for k, v in self.loss.state_dict().items()})
        return tensors

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
        acc.wait_for_everyone()
        if acc.is_main_process:
            ckpt.write_main(
                tmp, tensors=tensors, optimizer_state=self.optimizer.state_dict(), state=state
            )
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
        self.optimizer.load_state_dict(data["optimizer"])
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
        with torch.no_grad():
            return self.teacher.signals(batch)

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
            record = self.train_step(batches)
            window_items += sum(len(b) for b in batches)
            run_items += sum(len(b) for b in batches) * world
            if (
                self.step % r.train.log_every == 0
                or self.step == 1
                or self.step == r.optim.max_steps
            ):
                elapsed = time.perf_counter() - window_start
                record["items_per_s"] = window_items * world / max(elapsed, 1e-9)
                window_start, window_items = time.perf_counter(), 0
                self._log(record)
            bar.update(1)
            bar.set_postfix(self._postfix(record, run_items, run_start), refresh=False)
            last = record
            if r.train.eval_every and self.step % r.train.eval_every == 0:
                self._log({"step": self.step, **self.validate()})
            stop = self._stop
            if world > 1:
                stop = bool(acc.reduce(torch.tensor(float(stop), device=acc.device), "sum").item())
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

    def train_step(self, batches: list[AudioBatch]) -> dict[str, Any]:
        """One optimizer step over `grad_accum` micro-batches; returns the log record."""
        acc, r = self.accelerator, self.recipe
        grad_accum, world = len(batches), acc.num_processes
        student = acc.unwrap_model(self.step_module).student
        local = sum(answer_token_count(student, b) or 0 for b in batches)
        num_tokens = None
        if local:
            total = acc.reduce(torch.tensor(float(local), device=acc.device), "sum").item()
            num_tokens = total / (grad_accum * world)
        loss_sum, metric_sums = 0.0, {}
        for i, batch in enumerate(batches):
            batch = batch.to(acc.device)
            sync = i == grad_accum - 1
            ctx = nullcontext() if sync or world == 1 else acc.no_sync(self.step_module)
            with ctx:
                signals = self._signals(batch)
                loss, metrics = self.step_module(batch, signals, num_tokens)
                acc.backward(loss)
            loss_sum += float(loss.detach())
            for k, v in metrics.items():
                metric_sums[k] = metric_sums.get(k, 0.0) + float(v)
        grad_norm = None
        if r.optim.clip_grad_norm:
            grad_norm = acc.clip_grad_norm_(self.step_module.parameters(), r.optim.clip_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        advance_losses(self.loss, self.step)
        # every term is normalised by the global token count, so the mean over
        # processes of each process's micro-batch average is the global value
        names = sorted(k for k in metric_sums if k != "loss")
        values = torch.tensor([loss_sum] + [metric_sums[k] for k in names], device=acc.device)
        values = (acc.reduce(values, "mean") / grad_accum).tolist()
        record = {"step": self.step, "loss": values[0], "lr": self.scheduler.get_last_lr()[0]}
        record.update(dict(zip(names, values[1:])))
        if grad_norm is not None:
            record["grad_norm"] = float(grad_norm)
        return record

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Student CE and token accuracy on (a bounded number of) validation batches."""
        if self.valid_loader is None:
            return {}
        acc = self.accelerator
        student = acc.unwrap_model(self.step_module).student
        student.eval()
        totals = torch.zeros(3, device=acc.device)  # ce sum, correct, tokens
        for i, batch in enumerate(self.valid_loader):
            if i >= self.recipe.train.eval_batches:
                break
            out = student(batch.to(acc.device))
            ce_sum, correct, count = token_accuracy(out)
            totals += torch.stack([ce_sum, correct, count]).to(totals)
        student.train()
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
