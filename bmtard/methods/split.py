"""Distillation methods split in three parts, so that IGDM (``bmtard.methods.igdm``) can reuse a
method's attack and loss around forwards of its own: ``Splittable``, and the ``batch_loss`` such a
method is made of (``split_batch_loss``)."""

from __future__ import annotations

from typing import ClassVar, Protocol

from torch import Tensor, nn

from bmtard.runtime.execution import Execution, logits32

#: a forward's name -> the crafted batch's input it runs on
INPUTS = {"adv": "x_adv", "nat": "x"}


class Splittable(Protocol):
    """A base method whose ``batch_loss`` is its three parts, in this order (ARD, RSLAD, MTARD,
    B-MTARD, AdaAD):

    ``craft(model, x, y)``: the attack, -> the batch's tensors by name: 'x' (laid out), 'y',
    'x_adv' ((B, C, H, W) in [0, 1]), and whatever else its loss reuses;
    ``FORWARDS``: the student's train-mode forwards of the loss, in order: 'adv' (on x_adv) and
    'nat' (on x);
    ``loss_from(batch, logits, rate_factor)``: the loss and logs from those forwards' fp32 logits
    by name (stateful bases update their state here).
    """

    execution: Execution
    FORWARDS: ClassVar[tuple[str, ...]]

    def craft(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]: ...

    def loss_from(
        self, batch: dict[str, Tensor], logits: dict[str, Tensor], rate_factor: float = 1.0
    ) -> tuple[Tensor, dict[str, Tensor]]: ...

    def status(self) -> dict[str, float]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def start_epoch(self, epoch: int) -> None: ...

    def after_step(self) -> None: ...

    def end_epoch(self, epoch: int) -> None: ...

    def networks(self) -> dict[str, nn.Module]: ...

    def output(self) -> dict[str, Tensor] | None: ...


def split_batch_loss(
    method: Splittable, model: nn.Module, x: Tensor, y: Tensor, rate_factor: float = 1.0
) -> tuple[Tensor, dict[str, Tensor]]:
    """``method``'s batch loss from its parts: ``craft``, then the student in train mode on the
    crafted inputs in ``FORWARDS`` order (each forward moves BatchNorm's statistics), then
    ``loss_from`` on their fp32 logits."""
    batch = method.craft(model, x, y)
    model.train()
    with method.execution.autocast():
        logits = {name: logits32(model(batch[INPUTS[name]])) for name in method.FORWARDS}
    return method.loss_from(batch, logits, rate_factor)
