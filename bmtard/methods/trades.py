"""TRADES (Zhang et al.): the ``trades`` student (no teacher, ``distill.trades_beta``) and the
robust teacher's default training (``robust_teacher.method: trades``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bmtard.attacks.pgd import pgd
from bmtard.config.schema import TrainAttackConfig
from bmtard.methods.contract import Build, Method
from bmtard.methods.registry import register
from bmtard.runtime.execution import Execution, logits32


@dataclass
class TRADES(Method):
    """CE(f(x), y) + beta * KL(f(x) || f(x_adv)) / B; x_adv maximises that KL (eval mode while
    crafting, 0.001-Gaussian start by default, as the TRADES code).

    The TRADES code runs f(x) twice in train mode (once per term); we run it once and use it in
    both terms: the same loss and gradients, one BatchNorm running-statistics update fewer.
    """

    attack: TrainAttackConfig
    beta: float
    execution: Execution = field(default_factory=Execution)

    def batch_loss(
        self, model: nn.Module, x: Tensor, y: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        a, ex = self.attack, self.execution
        x = ex.layout(x)
        model.eval()
        with ex.attacking(model) as target:  # the clean prediction is the attack's target
            with torch.no_grad():
                p_clean = F.softmax(logits32(target(x)), dim=1)

            def kl_sum(logits: Tensor) -> Tensor:  # fp32, whatever the autocast
                return F.kl_div(F.log_softmax(logits32(logits), dim=1), p_clean, reduction="sum")

            x_adv = pgd(target, x, kl_sum, **a.pgd_args())
        model.train()
        with ex.autocast():
            logits = logits32(model(x))
            logits_adv = logits32(model(x_adv))
        natural = F.cross_entropy(logits, y)
        robust = (
            F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits, dim=1), reduction="sum")
            / x.shape[0]
        )
        loss = natural + self.beta * robust
        acc = 100 * (logits.argmax(1) == y).float().mean()  # %
        return loss, {
            "loss": loss.detach(),
            "loss_natural": natural.detach(),
            "loss_robust": robust.detach(),
            "train_acc": acc,
        }


@register("trades")
def from_config(b: Build) -> Method:
    return TRADES(b.cfg.attack, b.cfg.trades_beta, b.execution)
