"""AdaAD: Adaptive Adversarial Distillation (Huang et al., CVPR 2023), as its official code
computes it (boyellow/AdaAD at 9e5c6e5, MIT: ``AT_helper.py::adaad_inner_loss`` and
``main.py::train``, branch ``AdaAD``).

The attack (``adaad_attack``) maximises the summed KL(teacher || student) on x' with the input
gradient flowing through **both** networks; DGAD (``bmtard.methods.dgad``) and IGDM on AdaAD
(``bmtard.methods.igdm``) reuse it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from bmtard.attacks.pgd import pgd_input
from bmtard.config.method_table import ROBUST
from bmtard.config.schema import TrainAttackConfig
from bmtard.methods.contract import Build, Method
from bmtard.methods.losses import KL_REDUCTIONS, reduce_kl
from bmtard.methods.registry import register
from bmtard.methods.split import split_batch_loss
from bmtard.runtime.execution import Execution, logits32


def teacher_forward(teacher: nn.Module, x: Tensor, execution: Execution) -> Tensor:
    """The teacher's logits (N, K) in fp32 **with** autograd's graph back to the input (the
    teacher's own parameters stay frozen): its forward on an input of its dtype (bf16 when the
    execution holds teachers in bf16), outside the student's autocast."""
    return logits32(teacher(execution.layout(x).to(execution.teacher_dtype(x))))


def adaad_attack(
    student: nn.Module,
    teacher: nn.Module,
    x: Tensor,
    attack: TrainAttackConfig,
    execution: Execution | None = None,
) -> Tensor:
    """AdaAD's inner maximisation (official ``adaad_inner_loss``): L-inf PGD on
    sum over batch and classes of KL(softmax(T(x')) || softmax(S(x'))), the input gradient
    flowing through the student **and** the teacher, both in eval mode.

    x: (N, C, H, W) in [0, 1]. ``attack``: eps and step_size in 1/255, its ``init`` resolved by
    the caller (official: ``gaussian``, x + 0.001 N(0, I), not clamped before the first step;
    10 steps of 2/255 within 8/255 in the paper's runs). The student is left in eval mode (the
    caller sets train mode for its loss). Returns x' (N, C, H, W), detached, in [0, 1].
    """
    ex = execution or Execution()
    # the gradient is with respect to x only: run a DDP wrapper's module (as bmtard.attacks.pgd)
    net = student.module if isinstance(student, DistributedDataParallel) else student
    net.eval()
    teacher.eval()
    target = ex.attack_model(net)

    def objective(x_adv: Tensor) -> Tensor:
        with ex.attack_autocast():
            z_s = logits32(target(x_adv))
        p_t = F.softmax(teacher_forward(teacher, x_adv, ex), dim=1)
        # nn.KLDivLoss(reduction='none'), then torch.sum
        return F.kl_div(F.log_softmax(z_s, dim=1), p_t, reduction="none").sum()

    return pgd_input(ex.layout(x), objective, **attack.pgd_args())


def kl_official(z_student: Tensor, z_teacher: Tensor, reduction: str) -> Tensor:
    """KL(softmax(z_teacher) || softmax(z_student)) as nn.KLDivLoss computes it (no guard in the
    log); logits (B, K) fp32. 'mean': over all B x K elements (``nn.KLDivLoss()``, AdaAD's
    CIFAR-10 branch); 'batchmean': (1 / B) * the sum (its CIFAR-100 branch, written as the code
    writes it: the factor first)."""
    elem = F.kl_div(F.log_softmax(z_student, dim=1), F.softmax(z_teacher, dim=1), reduction="none")
    return reduce_kl(elem, reduction, factor_first=True)


@dataclass
class AdaAD(Method):
    """One AdaAD step per batch (official ``main.py::train``, branch ``AdaAD``).

    x' from ``adaad_attack`` (student and teacher in eval mode, gradient through both). Then the
    student, in train mode, is forwarded on x **and then** on x' (both forwards move BatchNorm's
    running statistics, the clean one even at alpha = 1, where its term has weight 0); the
    teacher, in eval mode without gradient, on x and x'. Loss:
    alpha * KL(T(x') || S(x')) + (1 - alpha) * KL(T(x) || S(x)), no temperature, no CE.

    teacher: the robust teacher (frozen; ``Execution.teacher``). attack: the training attack
    (eps, step in 1/255; official: 10 steps of 2/255 in 8/255 from the unclamped 0.001-Gaussian
    start, as the README's runs; the argparse defaults are eps 16, step 4). alpha: official
    ``--AdaAD_alpha`` 1.0. kl_reduction: 'mean' (over B x C: ``nn.KLDivLoss()``, the official
    CIFAR-10 branch) or 'batchmean' ((1/B) * sum: the CIFAR-100 branch; the code has no
    Tiny-ImageNet branch). The schedule is the caller's (official: 200 epochs, SGD lr 0.1,
    momentum 0.9, weight decay 5e-4, lr x 0.1 at epochs 100 and 150, batch 128).

    Faithful quirks, each the default: the unclamped Gaussian start (``attack.init: gaussian``;
    ``uniform`` is the clamped alternative); the zero-weight clean forward at alpha = 1 (always
    run); the attack's gradient through the teacher (the reason for the method). Logs: loss,
    loss_adv (the KL on x'), loss_nat (the KL on x).

    The split for IGDM (``bmtard.methods.igdm``): ``craft`` (the attack), ``FORWARDS`` (the
    student's forwards in order), ``loss_from`` (the loss from their logits).
    """

    teacher: nn.Module
    attack: TrainAttackConfig
    alpha: float = 1.0
    kl_reduction: str = "mean"
    execution: Execution = field(default_factory=Execution)

    #: the student's train-mode forwards, in the official order: "nat" on x, then "adv" on x'
    FORWARDS: ClassVar[tuple[str, ...]] = ("nat", "adv")

    def __post_init__(self) -> None:
        if self.kl_reduction not in KL_REDUCTIONS:
            raise ValueError(
                f"kl_reduction = {self.kl_reduction!r}: allowed are {', '.join(KL_REDUCTIONS)}"
            )

    def craft(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """The attack: {'x': x laid out, 'y', 'x_adv'} (the student left in eval mode)."""
        x = self.execution.layout(x)
        x_adv = adaad_attack(model, self.teacher, x, self.attack, self.execution)
        return {"x": x, "y": y, "x_adv": x_adv}

    def loss_from(
        self, batch: dict[str, Tensor], logits: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss from the student's fp32 logits {'nat', 'adv'} on the crafted batch."""
        ex = self.execution
        z_t_nat = ex.teacher_logits(self.teacher, batch["x"])
        z_t_adv = ex.teacher_logits(self.teacher, batch["x_adv"])
        kl_adv = kl_official(logits["adv"], z_t_adv, self.kl_reduction)
        kl_nat = kl_official(logits["nat"], z_t_nat, self.kl_reduction)
        loss = self.alpha * kl_adv + (1 - self.alpha) * kl_nat
        return loss, {
            "loss": loss.detach(),
            "loss_adv": kl_adv.detach(),
            "loss_nat": kl_nat.detach(),
        }

    def batch_loss(
        self, model: nn.Module, x: Tensor, y: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        return split_batch_loss(self, model, x, y)


@register("adaad")
def from_config(b: Build) -> Method:
    c = b.cfg
    return AdaAD(b.teachers[ROBUST], c.attack, c.adaad.alpha, c.kl_reduction, b.execution)
