"""B-MTARD: distillation from a clean and a robust teacher with balanced temperatures and weights
(spec sections 2-5 and 10, from the official code)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bmtard.attacks.pgd import pgd_ce
from bmtard.balance import Balance
from bmtard.config import TrainAttackConfig
from bmtard.losses import kl_to_teacher, neg_entropy, teacher_probs


@dataclass
class BMTARD:
    """One B-MTARD step per batch.

    The student crafts x_adv by PGD-CE on itself (eval mode); then, in train mode, it is matched to
    the robust teacher on x_adv and to the clean teacher on x. The teachers are frozen, in eval
    mode, and tempered by tau_adv / tau_nat; the student is never tempered.
    """

    teacher_adv: nn.Module
    teacher_nat: nn.Module
    attack: TrainAttackConfig
    balance: Balance
    kl_reduction: str = "mean"

    def batch_loss(
        self, model: nn.Module, x: Tensor, y: Tensor, rate_factor: float = 1.0
    ) -> tuple[Tensor, dict[str, float]]:
        a, b = self.attack, self.balance
        model.eval()  # BN uses running statistics while crafting
        x_adv = pgd_ce(
            model, x, y, eps=a.eps / 255, step_size=a.step_size / 255, steps=a.steps, init=a.init
        )
        model.train()
        z_sa = model(x_adv)
        z_sn = model(x)
        with torch.no_grad():
            p_ta = teacher_probs(self.teacher_adv(x_adv), b.tau_adv)
            p_tn = teacher_probs(self.teacher_nat(x), b.tau_nat)
        loss_adv = kl_to_teacher(z_sa, p_ta, self.kl_reduction)
        loss_nat = kl_to_teacher(z_sn, p_tn, self.kl_reduction)
        # Entropy-Based Balance: computed with this batch's temperatures, used from the next one.
        b.update_temperatures(neg_entropy(p_ta).item(), neg_entropy(p_tn).item(), rate_factor)
        # Normalization Loss Balance: the weights already include this batch's losses.
        la, ln = loss_adv.item(), loss_nat.item()
        b.update_weights(la, ln, rate_factor)
        loss = b.w_adv * loss_adv + b.w_nat * loss_nat
        return loss, {"loss": loss.item(), "loss_adv": la, "loss_nat": ln}

    def status(self) -> dict[str, float]:
        b = self.balance
        return {"tau_adv": b.tau_adv, "tau_nat": b.tau_nat, "w_adv": b.w_adv, "w_nat": b.w_nat}

    def state_dict(self) -> dict:
        return self.balance.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.balance.load_state_dict(state)
