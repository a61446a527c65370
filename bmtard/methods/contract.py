"""The method contract, stated once: what a training method is, what the loop calls on it and in
which order, and what it is built from.

A method turns one batch into a loss; the loop (``bmtard.training.loop``) owns the optimizer, the
lr schedule, the epochs and the logging. Per epoch the loop calls, in this order:

  ``start_epoch(epoch)``  1-based; also for an epoch resumed in its middle (a method that decays
                          its own rates with the schedule, such as B-MTARD's balance, sets them
                          here: nothing else of the schedule reaches the batch);
  per batch: ``batch_loss(model, x, y) -> (loss, logs)``, then the student's backward and
                          optimizer step, then ``after_step()``;
  ``end_epoch(epoch)``    after the epoch's last batch, before the monitor and the epoch's save.

``batch_loss``: x (B, C, H, W) in [0, 1], y (B,) labels; ``loss`` a 0-dim tensor with a graph to
the student; ``logs`` detached 0-dim tensors in one unit each (summed on the device and averaged
over the epoch by the loop, never read per batch). ``status()``: state worth logging at an
epoch's end (floats). ``state_dict()`` / ``load_state_dict(state)``: the method's own state
(tensors and plain data), saved with the training state so that a killed run resumes exactly.
``networks()``: the networks it trains besides the student (a fine-tuned teacher, a peer), which
the student's file keeps as they were at the selected epoch. ``output()``: weights to write in
the student's place (PeerAiD's weight average), or None. A teacher is never trained through the
student's loss: its parameters get no gradient.

``Method`` below has every part but ``batch_loss`` as the no-op of a method that keeps nothing and
trains nothing but the student. ``Splittable`` adds the split that IGDM reuses.

A method of ``distill.method`` is one module of this package named in its table row
(``bmtard.config.method_table``): its class, and a ``from_config(build) -> Method`` registered
under its name (``bmtard.methods.registry``) that reads its settings from the validated config.

Vocabulary: the papers' "natural" / "adversarial" (nat / adv) are the pipeline's clean / robust:
the clean teacher is matched on clean images (nat), the robust teacher on adversarial ones (adv).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from bmtard.config.schema import DistillConfig
from bmtard.data.stage_data import StageData
from bmtard.runtime.execution import Execution


class Method:
    """The contract's base: the no-op hooks and the empty state of a method that keeps nothing
    between batches and trains nothing but the student; subclasses give ``batch_loss``."""

    def batch_loss(
        self, model: nn.Module, x: Tensor, y: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def start_epoch(self, epoch: int) -> None:
        """Called before the epoch's first batch (``epoch`` 1-based)."""

    def after_step(self) -> None:
        """Called after each optimizer step of the student."""

    def end_epoch(self, epoch: int) -> None:
        """Called after the epoch's last batch, before the monitor."""

    def networks(self) -> dict[str, nn.Module]:
        """The networks the method trains besides the student, by name."""
        return {}

    def output(self) -> dict[str, Tensor] | None:
        """Weights to write as the student at the end of training (None: the selected student)."""
        return None

    def status(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


#: a forward's name -> the crafted batch's input it runs on (``Splittable.FORWARDS``)
INPUTS = {"adv": "x_adv", "nat": "x"}


class Splittable(Protocol):
    """A method whose ``batch_loss`` is three parts, in this order (ARD, RSLAD, MTARD, B-MTARD,
    AdaAD), so that IGDM (``bmtard.methods.igdm``) can run forwards of its own between them:

    ``craft(model, x, y)``: the attack, -> the batch's tensors by name: 'x' (laid out), 'y',
    'x_adv' ((B, C, H, W) in [0, 1]), and whatever else its loss reuses;
    ``FORWARDS``: the student's train-mode forwards of the loss, in order: 'adv' (on x_adv) and
    'nat' (on x) (``INPUTS``);
    ``loss_from(batch, logits)``: the loss and logs from those forwards' fp32 logits by name
    (stateful methods update their state here).
    """

    execution: Execution
    FORWARDS: ClassVar[tuple[str, ...]]

    def craft(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]: ...

    def loss_from(
        self, batch: dict[str, Tensor], logits: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]: ...

    def status(self) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def start_epoch(self, epoch: int) -> None: ...

    def after_step(self) -> None: ...

    def end_epoch(self, epoch: int) -> None: ...

    def networks(self) -> dict[str, nn.Module]: ...

    def output(self) -> dict[str, Tensor] | None: ...


#: teacher role (clean | robust) -> model, only the roles the method learns from
Teachers = dict[str, nn.Module]


@dataclass(frozen=True)
class Build:
    """What a method's ``from_config`` builds it from: the resolved config (no nulls), its
    teachers (frozen and prepared by ``execution``, but for those it fine-tunes, which come as
    loaded), the execution (precision, layout), the device, the student, the data (PeerAiD's
    BatchNorm pass reads the training split) and the run's seed."""

    cfg: DistillConfig
    teachers: Teachers
    execution: Execution
    device: torch.device
    student: nn.Module
    data: StageData
    seed: int
