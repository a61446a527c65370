"""The distillation baselines of the paper's comparison (spec section 9), as their official code
computes them: ARD, RSLAD and MTARD. Each is a per-batch loss like ``bmtard.methods.b_mtard``
(same protocol: ``batch_loss``, ``status``, ``state_dict``), with the same execution options
(bf16 autocast with fp32 losses, layout) and no host-device synchronisation.

Selected by ``distill.method`` (``bmtard.distill.BUILDERS``, ``bmtard.method_table``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bmtard.attacks.pgd import pgd, pgd_ce
from bmtard.balance import reference_losses
from bmtard.config import TrainAttackConfig
from bmtard.execution import Execution, logits32
from bmtard.losses import kl_to_teacher
from bmtard.methods.b_mtard import BMTARD
from bmtard.methods.stateless import Stateless

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
    """

    teacher: nn.Module
    attack: TrainAttackConfig
    temperature: float = 30.0
    alpha: float = 1.0
    execution: Execution = field(default_factory=Execution)

    def batch_loss(
        self, model: nn.Module, x: Tensor, y: Tensor, rate_factor: float = 1.0
    ) -> tuple[Tensor, dict[str, Tensor]]:
        a, ex, t = self.attack, self.execution, self.temperature
        x = ex.layout(x)
        model.train()
        with ex.autocast():
            x_adv = pgd_ce(model, x, y, **a.pgd_args())
            z_adv = logits32(model(x_adv))
            z_nat = logits32(model(x))
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
    with the official KL helper (``bmtard.losses.kl_to_teacher``). The two weights are separate
    numbers because 1 - 5/6 is not 1/6 in floating point.
    """

    teacher: nn.Module
    attack: TrainAttackConfig
    adv_weight: float = 5 / 6.0
    nat_weight: float = 1 / 6.0
    kl_reduction: str = "mean"
    execution: Execution = field(default_factory=Execution)
    kl_scale: float = 1.0  # the factor on both KL terms (x 10 on CIFAR-100 in RSLAD's code)

    def batch_loss(
        self, model: nn.Module, x: Tensor, y: Tensor, rate_factor: float = 1.0
    ) -> tuple[Tensor, dict[str, Tensor]]:
        a, ex = self.attack, self.execution
        x = ex.layout(x)
        p_t = F.softmax(ex.teacher_logits(self.teacher, x), dim=1)

        def kl_sum(logits: Tensor) -> Tensor:  # nn.KLDivLoss(reduce=False), then torch.sum
            return F.kl_div(F.log_softmax(logits32(logits), dim=1), p_t, reduction="none").sum()

        model.eval()
        with ex.autocast():
            x_adv = pgd(model, x, kl_sum, **a.pgd_args())
            model.train()
            z_adv = logits32(model(x_adv))
            z_nat = logits32(model(x))
        loss_adv = self.kl_scale * kl_to_teacher(z_adv, p_t, self.kl_reduction)
        loss_nat = self.kl_scale * kl_to_teacher(z_nat, p_t, self.kl_reduction)
        loss = self.adv_weight * loss_adv + self.nat_weight * loss_nat
        return loss, {
            "loss": loss.detach(),
            "loss_adv": loss_adv.detach(),
            "loss_nat": loss_nat.detach(),
        }


@dataclass
class MTARDWeights:
    """MTARD's balance (ECCV 2022 code) in the place of B-MTARD's ``bmtard.balance.Balance``:
    both teachers at temperature 1, always (no Entropy-Based Balance); w_nat moves toward
    l_nat^b / (l_adv^b + l_nat^b), l_i = L_i / L_i^0 (the first batch's losses), at rate ``lr``;
    w_adv = 1 - w_nat, with no clipping. 0-dim float64 tensors on the training device (L^0 NaN
    until known)."""

    tau_adv: Tensor
    tau_nat: Tensor
    w_nat: Tensor
    w_adv: Tensor
    l0_adv: Tensor
    l0_nat: Tensor
    lr: float = 0.025
    power: float = 1.0  # the official ``bert``

    @classmethod
    def start(cls, w_adv: float = 0.5, lr: float = 0.025, power: float = 1.0, device="cpu"):
        def t(v: float) -> Tensor:
            return torch.tensor(v, dtype=F64, device=device)

        one, nan = t(1.0), t(float("nan"))
        return cls(one, one, t(1.0 - w_adv), t(w_adv), nan, nan, lr, power)

    def update_temperatures(self, e_adv: Tensor, e_nat: Tensor, rate_factor: float = 1.0) -> None:
        """MTARD keeps both temperatures at 1."""

    def update_weights(self, loss_adv: Tensor, loss_nat: Tensor, rate_factor: float = 1.0) -> None:
        la, ln = loss_adv.detach().to(F64), loss_nat.detach().to(F64)
        self.l0_adv, self.l0_nat = reference_losses(self.l0_adv, self.l0_nat, la, ln)
        ra, rn = la / self.l0_adv, ln / self.l0_nat
        if self.power != 1:  # x ** 1 is x; a tensor pow might not return it exactly
            ra, rn = ra**self.power, rn**self.power
        lr = self.lr * rate_factor
        self.w_nat = self.w_nat - lr * (self.w_nat - rn / (ra + rn))
        self.w_adv = 1 - self.w_nat

    def status(self) -> dict[str, float]:
        """The same curves as B-MTARD's (its temperatures stay 1), to compare them side by side."""
        names = ("tau_adv", "tau_nat", "w_adv", "w_nat")
        return {n: float(getattr(self, n)) for n in names}

    def state_dict(self) -> dict:
        return {
            "w_nat": self.w_nat,
            "w_adv": self.w_adv,
            "l0_adv": self.l0_adv,
            "l0_nat": self.l0_nat,
        }

    def load_state_dict(self, state: dict) -> None:
        device = self.w_nat.device
        for name, value in state.items():
            setattr(self, name, value.to(device))


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
