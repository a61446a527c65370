"""How the training stages run their models: precision, memory layout, compilation (the CPU
threads are set by ``bmtard.runtime.device``).

The faithful path is fp32, NCHW, eager (the official code's numerics). The fast path is a
parameter each (``run.precision``, ``run.channels_last``, ``run.compile``, and the training
attack's own, below):

- bf16 autocast for the student's forwards and backward, the PGD inner loop included; the
  losses, softmax and KL are computed in fp32 on fp32-cast logits (``logits32``);
- the teachers held in bf16 and run under ``torch.inference_mode``;
- channels_last memory layout for every model (and its inputs);
- ``torch.compile`` of each model's forward, in place (``nn.Module.compile``, so state_dict
  keys do not change). The student switches between eval (PGD) and train mode every step; a
  compiled forward keeps one graph per mode (and per batch size: the last, partial batch of an
  epoch is kept and gets its own graph once), so after the first epoch nothing recompiles.

The training attack's fast path, each switch off by default and applied to every method's
attack in one place (``Execution.attacking``, which every method's attack runs under):

- ``run.attack_fold_bn``: BatchNorm folded into the convolutions while the student is attacked in
  eval mode (``bmtard.runtime.attack_twin``);
- ``run.attack_bf16``: the attack's forwards and backward under bf16 autocast (``run.precision:
  bf16`` includes it);
- ``run.attack_no_param_grads``: no parameter gradients in the attack (the input gradient is the
  same bits); the evaluation's attacks too, the one switch that keeps them fp32-exact;
- ``run.attack_compile``: the attacked student compiled once (inductor; ``cudagraphs``: CUDA
  graphs on a GPU);
- ``run.teachers_bf16``: the teachers held and run in bf16 (``run.precision: bf16`` includes it).

Evaluation, the monitor, the sanity checks and AutoAttack always run in fp32 (they load models
fresh from checkpoints, or run outside ``autocast``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from bmtard.config.schema import RunConfig
from bmtard.core.errors import ParamsError
from bmtard.runtime.attack_twin import Twin, make_twin

log = logging.getLogger(__name__)

#: the training attack's switches (``run.<name>``) and the teachers' one
ATTACK_SWITCHES = ("attack_fold_bn", "attack_bf16", "attack_no_param_grads", "attack_compile")
TEACHERS_SWITCH = "teachers_bf16"
#: each trick of the fast path the benchmark measures, with the value that turns it on (off is
#: the ``Execution`` default): the attack's switches, channels_last (every model) and the teachers'
FAST_PATH: dict[str, bool | str] = {
    "attack_fold_bn": True,
    "attack_bf16": True,
    "attack_no_param_grads": True,
    "channels_last": True,
    "attack_compile": "inductor",
    "teachers_bf16": True,
}
#: the switches a training stage (by its params section) has no use for: left out of its result
#: key and of its params in dvc.yaml, so that turning one on retrains nothing that never runs it
#: (the clean teacher attacks nothing; no teacher stage learns from a teacher)
UNUSED_BY: dict[str, tuple[str, ...]] = {
    "clean_teacher": (*ATTACK_SWITCHES, TEACHERS_SWITCH),
    "robust_teacher": (TEACHERS_SWITCH,),
}

#: graphs a compiled forward may keep (train/eval x full/partial batch x grad/no-grad, with room)
COMPILE_CACHE = 32


@dataclass(frozen=True)
class Execution:
    """Precision, layout and compilation of the training stages' models, and the training
    attack's fast path (the module docstring; ``run``'s parameters of the same names)."""

    precision: str = "fp32"  # fp32 | bf16
    channels_last: bool = False
    compile: bool = False
    device_type: str = "cpu"
    attack_fold_bn: bool = False
    attack_bf16: bool = False
    attack_no_param_grads: bool = False
    attack_compile: str = "eager"  # eager | inductor | cudagraphs
    teachers_bf16: bool = False
    #: the attack's twins, by (the student's id, folded): built at the first attack
    twins: dict[tuple[int, bool], Twin] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_config(cls, run: RunConfig, device: torch.device) -> Execution:
        if run.attack_compile == "cudagraphs" and device.type != "cuda":
            raise ParamsError(
                f"run.attack_compile = 'cudagraphs' needs a CUDA device (this run's is "
                f"{device.type}): set eager or inductor"
            )
        return cls(
            run.precision, run.channels_last, run.compile, device.type,
            attack_fold_bn=run.attack_fold_bn, attack_bf16=run.attack_bf16,
            attack_no_param_grads=run.attack_no_param_grads,
            attack_compile=run.attack_compile, teachers_bf16=run.teachers_bf16,
        )  # fmt: skip

    @property
    def bf16(self) -> bool:
        """The student's training compute in bf16 (``run.precision``)."""
        return self.precision == "bf16"

    @property
    def teachers_in_bf16(self) -> bool:
        return self.bf16 or self.teachers_bf16

    @property
    def attack_in_bf16(self) -> bool:
        return self.bf16 or self.attack_bf16

    @property
    def twinned(self) -> bool:
        """Whether the attack runs a twin of the student (``bmtard.runtime.attack_twin``)."""
        return self.attack_fold_bn or self.attack_no_param_grads or self.attack_compile != "eager"

    def attack_autocast(self) -> contextlib.AbstractContextManager:
        """The attack's compute: bf16 autocast where asked, else nothing."""
        if not self.attack_in_bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=torch.bfloat16)

    def attack_model(self, model: nn.Module) -> nn.Module:
        """The module the training attack differentiates: the student itself (a DDP wrapper's
        module: the gradient is with respect to the input only), or its twin, up to date with
        the student's weights, statistics and mode (folded while the student is in eval mode)."""
        net = model.module if isinstance(model, DistributedDataParallel) else model
        if not self.twinned:
            return net
        key = (id(net), self.attack_fold_bn and not net.training)
        twin = self.twins.get(key)
        if twin is None or twin.student is not net:
            twin = make_twin(
                net, fold=key[1], param_grads=not self.attack_no_param_grads,
                compile_mode=self.attack_compile,
            )  # fmt: skip
            self.twins[key] = twin
        else:
            twin.refresh()
        return twin.module

    @contextlib.contextmanager
    def attacking(self, model: nn.Module) -> Iterator[nn.Module]:
        """Where every method's training attack runs: yields ``attack_model(model)`` inside the
        attack's compute (``attack_autocast``). The student's mode is the caller's (eval for
        most methods, train for ARD, DGAD, IGDM)."""
        target = self.attack_model(model)
        with self.attack_autocast():
            yield target

    def autocast(self) -> contextlib.AbstractContextManager:
        """The student's training compute: bf16 autocast, or nothing at all in fp32."""
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
        """A frozen teacher: eval mode, no gradients, bf16 weights where the teachers are in bf16,
        laid out, compiled."""
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        if self.teachers_in_bf16:
            model.to(torch.bfloat16)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self._compile(model)
        return model

    def teacher_logits(self, teacher: nn.Module, x: Tensor) -> Tensor:
        """A teacher's logits as a fp32 tensor that autograd may keep (computed in inference
        mode, which is cheaper than no_grad; the copy makes it an ordinary tensor)."""
        with torch.inference_mode():
            z = teacher(self.layout(x).to(self.teacher_dtype(x)))
        return z.to(torch.float32, copy=True)

    def teacher_dtype(self, x: Tensor) -> torch.dtype:
        """What a teacher's input is cast to: bf16 where the teachers are held in bf16."""
        return torch.bfloat16 if self.teachers_in_bf16 else x.dtype

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
