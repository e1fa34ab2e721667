"""Where the frozen teacher lives on N processes, and how it runs.

- "replicated" (default): every process holds the whole teacher (DDP-style). Simple, no
  communication, but a SALMONN-7B teacher is ~14 GiB of bf16 weights on every card.
- "sharded": the teacher is wrapped by the run's FSDP plugin (`accelerator.prepare_model`),
  so each process holds 1/N of its weights and gathers a layer at a time in the forward.
  It takes no gradients and stays in eval mode. Every process runs the teacher on every
  micro-batch, which a sharded forward needs (it is collective). DeepSpeed ZeRO-3 would
  need a second engine for a model without an optimizer; it is refused with that reason.

`distill inspect MODEL --compare STUDENT --gpus N` prints the per-GPU memory of both.

Either way the teacher runs under `torch.inference_mode`. Its outputs are then copied out
of inference mode (`outside_inference`): the losses save some of them for their backward
(feature MSE saves the teacher's hidden states), which inference tensors forbid.
"""

from __future__ import annotations

import dataclasses

import torch


def place_teacher(accelerator, teacher, placement: str) -> None:
    """Apply `train.teacher_placement` to a built teacher (in place)."""
    model = getattr(teacher, "model", None)
    if isinstance(model, torch.nn.Module):
        model.requires_grad_(False)
        model.eval()
    if placement == "replicated":
        return
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        raise ValueError(
            "train.teacher_placement: sharded is not supported under DeepSpeed (ZeRO-3 "
            "would need a second engine for a model without an optimizer); use "
            "'replicated', or FSDP in the accelerate config"
        )
    if kind != DistributedType.FSDP:
        raise ValueError(
            f"train.teacher_placement: sharded needs FSDP in the accelerate config; this "
            f"run is {kind.value} on {accelerator.num_processes} process(es). Use "
            "'replicated', or `accelerate launch --config_file <fsdp config>`"
        )
    if not isinstance(model, torch.nn.Module):
        raise ValueError(
            f"train.teacher_placement: sharded needs a live teacher with a `.model`; "
            f"{type(teacher).__name__} has none (a cached teacher holds no weights)"
        )
    wrapped = accelerator.prepare_model(model)
    wrapped.eval()
    teacher.model = wrapped


def outside_inference(signals):
    """`signals` (a `TeacherSignals` just built by the teacher) with each inference-mode
    tensor field replaced, in place, by a normal clone of it (same values)."""
    if signals is None or not dataclasses.is_dataclass(signals):
        return signals
    for f in dataclasses.fields(signals):
        value = getattr(signals, f.name)
        if isinstance(value, torch.Tensor) and value.is_inference():
            setattr(signals, f.name, value.clone())
    return signals
