"""RSLAD (Zi et al., ICCV 2021), as its official ``rslad_loss.py`` and training script compute
it: the ``rslad`` method (the robust teacher)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from bmtard.attacks.pgd import pgd
from bmtard.config.method_table import ROBUST
from bmtard.config.schema import TrainAttackConfig
from bmtard.methods.contract import Build, Method
from bmtard.methods.losses import kl_to_teacher
from bmtard.methods.registry import register
from bmtard.methods.split import split_batch_loss
from bmtard.runtime.execution import Execution, logits32


@dataclass
class RSLAD(Method):
    """RSLAD (Zi et al., ICCV 2021; official ``rslad_loss.py`` and training script).

    One robust teacher at temperature 1, always on the clean x. The attack maximises the summed
    KL(softmax(teacher(x)) || softmax(student(x'))) with the student in eval mode, from the
    0.001-Gaussian start. Loss: adv_weight * KL(T(x) || S(x_adv)) + nat_weight * KL(T(x) || S(x))
    with the official KL helper (``bmtard.methods.losses.kl_to_teacher``). The two weights are
    separate numbers because 1 - 5/6 is not 1/6 in floating point.

    ``batch_loss`` is ``craft`` (the attack), the student's ``FORWARDS`` in order (train mode),
    then ``loss_from`` their logits: the split that IGDM (``bmtard.methods.igdm``) reuses.
    """

    teacher: nn.Module
    attack: TrainAttackConfig
    adv_weight: float = 5 / 6.0
    nat_weight: float = 1 / 6.0
    kl_reduction: str = "mean"
    execution: Execution = field(default_factory=Execution)
    kl_scale: float = 1.0  # the factor on both KL terms (x 10 on CIFAR-100 in RSLAD's code)

    #: the student's train-mode forwards of the loss, in order: "adv" on x_adv, then "nat" on x
    FORWARDS: ClassVar[tuple[str, ...]] = ("adv", "nat")

    def craft(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """The attack (student in eval mode): {'x': x laid out, 'y', 'x_adv', 'p_t': the
        teacher's probabilities on x (B, K), which the loss reuses}."""
        ex = self.execution
        x = ex.layout(x)
        p_t = F.softmax(ex.teacher_logits(self.teacher, x), dim=1)

        def kl_sum(logits: Tensor) -> Tensor:  # nn.KLDivLoss(reduce=False), then torch.sum
            return F.kl_div(F.log_softmax(logits32(logits), dim=1), p_t, reduction="none").sum()

        model.eval()
        with ex.attacking(model) as target:
            x_adv = pgd(target, x, kl_sum, **self.attack.pgd_args())
        return {"x": x, "y": y, "x_adv": x_adv, "p_t": p_t}

    def batch_loss(
        self, model: nn.Module, x: Tensor, y: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        return split_batch_loss(self, model, x, y)

    def loss_from(
        self, batch: dict[str, Tensor], logits: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss from the student's fp32 logits {'adv', 'nat'} on the crafted batch."""
        p_t, z_adv, z_nat = batch["p_t"], logits["adv"], logits["nat"]
        loss_adv = self.kl_scale * kl_to_teacher(z_adv, p_t, self.kl_reduction)
        loss_nat = self.kl_scale * kl_to_teacher(z_nat, p_t, self.kl_reduction)
        loss = self.adv_weight * loss_adv + self.nat_weight * loss_nat
        return loss, {
            "loss": loss.detach(),
            "loss_adv": loss_adv.detach(),
            "loss_nat": loss_nat.detach(),
        }


@register("rslad")
def from_config(b: Build) -> Method:
    c = b.cfg
    return RSLAD(
        b.teachers[ROBUST], c.attack, kl_reduction=c.kl_reduction, execution=b.execution,
        kl_scale=c.kl_scale,
    )  # fmt: skip
