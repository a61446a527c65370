"""How the training stages run their models: precision, memory layout, compilation, threads.

The faithful path is fp32, NCHW, eager (the official code's numerics). The fast path is a
parameter each (``run.precision``, ``run.channels_last``, ``run.compile``):

- bf16 autocast for the student's forwards and backward, the PGD inner loop included; the
  losses, softmax and KL are computed in fp32 on fp32-cast logits (``logits32``);
- the teachers held in bf16 and run under ``torch.inference_mode``;
- channels_last memory layout for every model (and its inputs);
- ``torch.compile`` of each model's forward, in place (``nn.Module.compile``, so state_dict
  keys do not change). The student switches between eval (PGD) and train mode every step; a
  compiled forward keeps one graph per mode (and per batch size: the last, partial batch of an
  epoch is kept and gets its own graph once), so after the first epoch nothing recompiles.

Evaluation, the monitor, the sanity checks and AutoAttack always run in fp32 (they load models
fresh from checkpoints, or run outside ``autocast``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bmtard.config.schema import RunConfig
from bmtard.core.errors import ParamsError

log = logging.getLogger(__name__)

#: graphs a compiled forward may keep (train/eval x full/partial batch x grad/no-grad, with room)
COMPILE_CACHE = 32


@dataclass(frozen=True)
class Execution:
    """Precision, layout and compilation of the training stages' models."""

    precision: str = "fp32"  # fp32 | bf16
    channels_last: bool = False
    compile: bool = False
    device_type: str = "cpu"

    @classmethod
    def from_config(cls, run: RunConfig, device: torch.device) -> Execution:
        return cls(run.precision, run.channels_last, run.compile, device.type)

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"

    def autocast(self) -> contextlib.AbstractContextManager:
        """The student's compute: bf16 autocast, or nothing at all in fp32."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=torch.bfloat16)

    def student(self, model: nn.Module) -> nn.Module:
        """Lay out (and compile) the trained model in place; its weights stay fp32."""
        if self.channels_last:
            if self.device_type == "cpu":
                refuse_onednn_hang(model)
            model.to(memory_format=torch.channels_last)
        self._compile(model)
        return model

    def teacher(self, model: nn.Module) -> nn.Module:
        """A frozen teacher: eval mode, no gradients, bf16 weights with bf16, laid out, compiled."""
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        if self.bf16:
            model.to(torch.bfloat16)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self._compile(model)
        return model

    def teacher_logits(self, teacher: nn.Module, x: Tensor) -> Tensor:
        """A teacher's logits as a fp32 tensor that autograd may keep (computed in inference
        mode, which is cheaper than no_grad; the copy makes it an ordinary tensor)."""
        with torch.inference_mode():
            z = teacher(self.layout(x).to(torch.bfloat16 if self.bf16 else x.dtype))
        return z.to(torch.float32, copy=True)

    def layout(self, x: Tensor) -> Tensor:
        """Inputs in the models' memory layout (a no-op for NCHW)."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _compile(self, model: nn.Module) -> None:
        if self.compile:
            torch._dynamo.config.cache_size_limit = max(
                torch._dynamo.config.cache_size_limit, COMPILE_CACHE
            )
            model.compile()


#: oneDNN's AVX2 kernel for the weight gradient of a strided 1x1 convolution in channels_last
#: layout hangs, crashes or returns wrong gradients when the input channels are not a multiple
#: of its block of 8 (measured here with torch 2.14.1: a hang; oneDNN issue 6035).
ONEDNN_BLOCK = 8


def refuse_onednn_hang(model: nn.Module) -> None:
    """Refuse channels_last training on a CPU for a model with a convolution oneDNN gets wrong."""
    for name, m in model.named_modules():
        strided = isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1)
        if strided and m.in_channels % ONEDNN_BLOCK:
            raise ParamsError(
                f"run.channels_last: true trains {name} (a strided 1x1 convolution with "
                f"{m.in_channels} input channels) on the CPU, where oneDNN's weight gradient for "
                f"it hangs or is wrong; set run.channels_last: false, or use a width whose "
                f"channel counts are multiples of {ONEDNN_BLOCK}"
            )


def logits32(z: Tensor) -> Tensor:
    """Logits for the losses: fp32 whatever the autocast produced."""
    return z.float()


def threads_given(run: RunConfig) -> int:
    """The CPU threads this process may use: ``run.num_threads`` when set, else what the engine or
    the scheduler granted (``SLURM_CPUS_PER_TASK``; ``OMP_NUM_THREADS``, which Snakemake sets to a
    rule's ``threads``), else the CPUs this process may run on. A torchrun worker
    (``LOCAL_WORLD_SIZE`` set) takes ``OMP_NUM_THREADS``: its share, which ``bmtard.core.launch``
    sets.
    """
    if run.num_threads:
        return run.num_threads
    worker = "LOCAL_WORLD_SIZE" in os.environ
    for var in ("OMP_NUM_THREADS",) if worker else ("SLURM_CPUS_PER_TASK", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
