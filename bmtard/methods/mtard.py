"""MTARD (Zhao et al., ECCV 2022), as its official ``mtard_resnet18_cifar10.py`` computes it: the
``mtard`` method, B-MTARD's step (``bmtard.methods.b_mtard``) with MTARD's weights as its balance
(``distill.balance``'s ``w_adv_init`` and ``weight_lr``; temperatures fixed at 1)."""

from __future__ import annotations

from torch import nn

from bmtard.config.method_table import CLEAN, ROBUST
from bmtard.config.schema import TrainAttackConfig
from bmtard.methods.b_mtard import BMTARD, rates_of
from bmtard.methods.balance import MTARDWeights
from bmtard.methods.contract import Build, Method
from bmtard.methods.decays import StepDecay
from bmtard.methods.registry import register
from bmtard.runtime.execution import Execution


def MTARD(  # noqa: N802 (named like the other methods, which are classes)
    teacher_adv: nn.Module,
    teacher_nat: nn.Module,
    attack: TrainAttackConfig,
    weights: MTARDWeights,
    kl_reduction: str = "mean",
    execution: Execution | None = None,
    kl_scale: float = 1.0,
    rates: StepDecay | None = None,
) -> BMTARD:
    """MTARD: B-MTARD's step (the same attack on the student, the robust teacher on x_adv, the
    clean teacher on x, the same KL helper) with ``MTARDWeights`` as its balance."""
    ex = execution or Execution()
    return BMTARD(
        teacher_adv, teacher_nat, attack, weights, kl_reduction, ex, kl_scale, rates or StepDecay()
    )


@register("mtard")
def from_config(b: Build) -> Method:
    c, t = b.cfg, b.teachers
    weights = MTARDWeights.start(c.balance.w_adv_init, c.balance.weight_lr, device=b.device)
    return MTARD(
        t[ROBUST], t[CLEAN], c.attack, weights, c.kl_reduction, b.execution, c.kl_scale,
        rates_of(b),
    )  # fmt: skip
