"""The ``batch_loss`` a splittable method is made of (``bmtard.methods.contract.Splittable``):
its attack, the student's forwards in train mode, its loss from their logits."""

from __future__ import annotations

from torch import Tensor, nn

from bmtard.methods.contract import INPUTS, Splittable
from bmtard.runtime.execution import logits32


def split_batch_loss(
    method: Splittable, model: nn.Module, x: Tensor, y: Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    """``method``'s batch loss from its parts: ``craft``, then the student in train mode on the
    crafted inputs in ``FORWARDS`` order (each forward moves BatchNorm's statistics), then
    ``loss_from`` on their fp32 logits."""
    batch = method.craft(model, x, y)
    model.train()
    with method.execution.autocast():
        logits = {name: logits32(model(batch[INPUTS[name]])) for name in method.FORWARDS}
    return method.loss_from(batch, logits)
