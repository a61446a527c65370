"""ARD (Goldblum et al., AAAI 2020), as its official ``main.py`` computes it: the ``ard`` method
(the robust teacher; ``distill.ard``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from bmtard.attacks.pgd import pgd_ce
from bmtard.config.method_table import ROBUST
from bmtard.config.schema import TrainAttackConfig
from bmtard.methods.contract import Build, Method
from bmtard.methods.registry import register
from bmtard.methods.split import split_batch_loss
from bmtard.runtime.execution import Execution


@dataclass
class ARD(Method):
    """ARD (Goldblum et al., AAAI 2020; official ``main.py``).

    PGD-CE on the student **in train mode** (the official ``AttackPGD`` runs inside ``net.train()``,
    so BatchNorm uses batch statistics and updates its running ones while crafting), from a
    uniform start that is not clamped before the first step (``init: uniform_unclamped``). Loss:
    alpha * T^2 * KL(softmax(teacher(x)/T) || softmax(student(x_adv)/T)) with ``nn.KLDivLoss()``'s
    mean over B x C, + (1 - alpha) * CE(student(x), y). The teacher sees the clean x. The clean
    forward runs even when alpha = 1 (it updates BatchNorm's statistics, as the official code's).

    ``batch_loss`` is ``craft`` (the attack), the student's ``FORWARDS`` in order (train mode),
    then ``loss_from`` their logits: the split that IGDM (``bmtard.methods.igdm``) reuses.
    """

    teacher: nn.Module
    attack: TrainAttackConfig
    temperature: float = 30.0
    alpha: float = 1.0
    execution: Execution = field(default_factory=Execution)

    #: the student's train-mode forwards of the loss, in order: "adv" on x_adv, then "nat" on x
    FORWARDS: ClassVar[tuple[str, ...]] = ("adv", "nat")

    def craft(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """The attack (student in train mode): {'x': x laid out, 'y', 'x_adv'}."""
        ex = self.execution
        x = ex.layout(x)
        model.train()
        with ex.attacking(model) as target:
            x_adv = pgd_ce(target, x, y, **self.attack.pgd_args())
        return {"x": x, "y": y, "x_adv": x_adv}

    def batch_loss(
        self, model: nn.Module, x: Tensor, y: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        return split_batch_loss(self, model, x, y)

    def loss_from(
        self, batch: dict[str, Tensor], logits: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss from the student's fp32 logits {'adv', 'nat'} on the crafted batch."""
        ex, t = self.execution, self.temperature
        x, y, z_adv, z_nat = batch["x"], batch["y"], logits["adv"], logits["nat"]
        z_t = ex.teacher_logits(self.teacher, x)
        # nn.KLDivLoss()'s mean over B x C, written out (torch's 'mean' is deprecated)
        kl = F.kl_div(F.log_softmax(z_adv / t, dim=1), F.softmax(z_t / t, dim=1), reduction="none")
        kl = kl.mean()
        ce = F.cross_entropy(z_nat, y)
        loss = self.alpha * t * t * kl + (1.0 - self.alpha) * ce
        return loss, {"loss": loss.detach(), "loss_kl": kl.detach(), "loss_ce": ce.detach()}


@register("ard")
def from_config(b: Build) -> Method:
    c = b.cfg
    return ARD(b.teachers[ROBUST], c.attack, c.ard.temperature, c.ard.alpha, b.execution)
