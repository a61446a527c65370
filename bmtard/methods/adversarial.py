"""Adversarial training of the robust teacher: PGD-AT (Madry et al.) and TRADES (Zhang et al.)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bmtard.attacks.pgd import pgd, pgd_ce
from bmtard.config.params import TrainAttackConfig
from bmtard.methods.stateless import Stateless
from bmtard.runtime.execution import Execution, logits32


@dataclass
class PGDAT(Stateless):
    """Cross-entropy on PGD-CE examples crafted with the model in eval mode (BN frozen)."""

    attack: TrainAttackConfig
    execution: Execution = field(default_factory=Execution)

    def batch_loss(
        self, model: nn.Module, x: Tensor, y: Tensor, rate_factor: float = 1.0
    ) -> tuple[Tensor, dict[str, Tensor]]:
        a, ex = self.attack, self.execution
        model.eval()
        with ex.autocast():
            x_adv = pgd_ce(model, ex.layout(x), y, **a.pgd_args())
            model.train()
            logits = logits32(model(x_adv))
        loss = F.cross_entropy(logits, y)
        acc = 100 * (logits.argmax(1) == y).float().mean()  # %
        return loss, {"loss": loss.detach(), "train_adv_acc": acc}


@dataclass
class TRADES(Stateless):
    """CE(f(x), y) + beta * KL(f(x) || f(x_adv)) / B; x_adv maximises that KL (eval mode while
    crafting, 0.001-Gaussian start by default, as the TRADES code).

    The TRADES code runs f(x) twice in train mode (once per term); we run it once and use it in
    both terms: the same loss and gradients, one BatchNorm running-statistics update fewer.
    """

    attack: TrainAttackConfig
    beta: float
    execution: Execution = field(default_factory=Execution)

    def batch_loss(
        self, model: nn.Module, x: Tensor, y: Tensor, rate_factor: float = 1.0
    ) -> tuple[Tensor, dict[str, Tensor]]:
        a, ex = self.attack, self.execution
        x = ex.layout(x)
        model.eval()
        with ex.autocast():
            with torch.no_grad():
                p_clean = F.softmax(logits32(model(x)), dim=1)

            def kl_sum(logits: Tensor) -> Tensor:  # fp32, whatever the autocast
                return F.kl_div(F.log_softmax(logits32(logits), dim=1), p_clean, reduction="sum")

            x_adv = pgd(model, x, kl_sum, **a.pgd_args())
            model.train()
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
