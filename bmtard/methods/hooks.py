"""The optional half of the method protocol: what a method may do around the loop's steps.

The loop (``bmtard.training.loop``) calls, in this order, for every epoch: ``start_epoch(epoch)``
(1-based; also for an epoch resumed in its middle), then per batch ``batch_loss`` -> the student's
backward and optimizer step -> ``after_step()``, then ``end_epoch(epoch)`` after the epoch's last
batch (before the monitor and the epoch's save). ``networks()`` names the networks a method trains
besides the student (a fine-tuned teacher, a peer), which the student's checkpoint records as they
were at the selected epoch. ``output()`` gives weights to write in the student's place (PeerAiD's
weight average), or None for the student's own.

Methods that need none of this inherit the no-ops.
"""

from __future__ import annotations

from torch import Tensor, nn


class Hooks:
    """No-op hooks: a method that keeps nothing per epoch and trains nothing but the student."""

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
