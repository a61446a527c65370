"""The distillation baselines of the paper's comparison (spec section 9), as their official code
computes them: ARD, RSLAD and MTARD. Each is a per-batch loss like ``bmtard.methods.b_mtard``
(same protocol: ``batch_loss``, ``status``, ``state_dict``), with the same execution options
(bf16 autocast with fp32 losses, layout) and no host-device synchronisation.

Selected by ``distill.method`` (``bmtard.training.distill.BUILDERS``,
``bmtard.config.method_table``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bmtard.attacks.pgd import pgd, pgd_ce
from bmtard.config.params import TrainAttackConfig
from bmtard.methods.b_mtard import BMTARD
from bmtard.methods.balance import MTARDWeights
from bmtard.methods.losses import kl_to_teacher
from bmtard.methods.split import split_batch_loss
from bmtard.methods.stateless import Stateless
from bmtard.runtime.execution import Execution, logits32

F64 = torch.float64


@dataclass
class ARD(Stateless):
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
        with ex.autocast():
            x_adv = pgd_ce(model, x, y, **self.attack.pgd_args())
        return {"x": x, "y": y, "x_adv": x_adv}

    def batch_loss(
        self, model: nn.Module, x: Tensor, y: Tensor, rate_factor: float = 1.0
    ) -> tuple[Tensor, dict[str, Tensor]]:
        return split_batch_loss(self, model, x, y, rate_factor)

    def loss_from(
        self, batch: dict[str, Tensor], logits: dict[str, Tensor], rate_factor: float = 1.0
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


@dataclass
class RSLAD(Stateless):
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
        with ex.autocast():
            x_adv = pgd(model, x, kl_sum, **self.attack.pgd_args())
        return {"x": x, "y": y, "x_adv": x_adv, "p_t": p_t}

    def batch_loss(
        self, model: nn.Module, x: Tensor, y: Tensor, rate_factor: float = 1.0
    ) -> tuple[Tensor, dict[str, Tensor]]:
        return split_batch_loss(self, model, x, y, rate_factor)

    def loss_from(
        self, batch: dict[str, Tensor], logits: dict[str, Tensor], rate_factor: float = 1.0
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


def MTARD(  # noqa: N802 (named like the other methods, which are classes)
    teacher_adv: nn.Module,
    teacher_nat: nn.Module,
    attack: TrainAttackConfig,
    weights: MTARDWeights,
    kl_reduction: str = "mean",
    execution: Execution | None = None,
    kl_scale: float = 1.0,
) -> BMTARD:
    """MTARD (Zhao et al., ECCV 2022; official ``mtard_resnet18_cifar10.py``): B-MTARD's step
    (the same attack on the student, the robust teacher on x_adv, the clean teacher on x, the
    same KL helper) with ``MTARDWeights`` as its balance."""
    ex = execution or Execution()
    return BMTARD(teacher_adv, teacher_nat, attack, weights, kl_reduction, ex, kl_scale)
