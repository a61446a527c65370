"""B-MTARD: distillation from a clean and a robust teacher with balanced temperatures and weights
(spec sections 2-5 and 10, from the official code): the ``bmtard`` method (``distill.balance``).
nat / adv are the clean / robust sides (``bmtard.methods.contract``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import Tensor, nn

from bmtard.attacks.pgd import pgd_ce
from bmtard.config.method_table import CLEAN, ROBUST
from bmtard.config.schema import TrainAttackConfig
from bmtard.core import distributed
from bmtard.methods.balance import Balance, MTARDWeights
from bmtard.methods.contract import Build, Method
from bmtard.methods.decays import StepDecay
from bmtard.methods.losses import kl_to_teacher, neg_entropy, teacher_probs
from bmtard.methods.registry import register
from bmtard.methods.split import split_batch_loss
from bmtard.runtime.execution import Execution


@dataclass
class BMTARD(Method):
    """One B-MTARD step per batch, with no host-device synchronisation.

    The student crafts x_adv by PGD-CE on itself (eval mode); then, in train mode, it is matched to
    the robust teacher on x_adv and to the clean teacher on x. The teachers are frozen, in eval
    mode, and tempered by tau_adv / tau_nat; the student is never tempered. The balance state
    stays on the device (``bmtard.methods.balance``); the logs are detached 0-dim tensors. The
    balance's rates decay with the lr: ``rates`` (the optimizer's milestones and gamma), in
    force from ``start_epoch``.

    ``batch_loss`` is ``craft`` (the attack), the student's ``FORWARDS`` in order (train mode),
    then ``loss_from`` their logits (which updates the balance): the split that IGDM
    (``bmtard.methods.igdm``) reuses.
    """

    teacher_adv: nn.Module
    teacher_nat: nn.Module
    attack: TrainAttackConfig
    balance: Balance | MTARDWeights  # MTARD's weights take the balance's place
    kl_reduction: str = "mean"
    execution: Execution = field(default_factory=Execution)
    kl_scale: float = 1.0  # the factor on both KL terms (x 10 on CIFAR-100 in the ECCV code)
    rates: StepDecay = field(default_factory=StepDecay)  # the balance rates' decay per epoch
    rate_factor: float = field(default=1.0, init=False)  # the decay in force this epoch

    #: the student's train-mode forwards of the loss, in order: "adv" on x_adv, then "nat" on x
    FORWARDS: ClassVar[tuple[str, ...]] = ("adv", "nat")

    def craft(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """The attack (student in eval mode): {'x': x laid out, 'y', 'x_adv'}."""
        ex = self.execution
        x = ex.layout(x)
        model.eval()  # BN uses running statistics while crafting
        with ex.attacking(model) as target:
            x_adv = pgd_ce(target, x, y, **self.attack.pgd_args())
        return {"x": x, "y": y, "x_adv": x_adv}

    def start_epoch(self, epoch: int) -> None:
        self.rate_factor = self.rates.factor(epoch)

    def batch_loss(
        self, model: nn.Module, x: Tensor, y: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        return split_batch_loss(self, model, x, y)

    def loss_from(
        self, batch: dict[str, Tensor], logits: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss from the student's fp32 logits {'adv', 'nat'} on the crafted batch; updates
        the balance (temperatures for the next batch, weights for this one)."""
        b, ex = self.balance, self.execution
        x, y, x_adv = batch["x"], batch["y"], batch["x_adv"]
        z_sa, z_sn = logits["adv"], logits["nat"]
        p_ta = teacher_probs(ex.teacher_logits(self.teacher_adv, x_adv), b.tau_adv)
        p_tn = teacher_probs(ex.teacher_logits(self.teacher_nat, x), b.tau_nat)
        loss_adv = self.kl_scale * kl_to_teacher(z_sa, p_ta, self.kl_reduction)
        loss_nat = self.kl_scale * kl_to_teacher(z_sn, p_tn, self.kl_reduction)
        # over the whole batch when it is shared by several processes (the same on every rank)
        e_adv, e_nat, l_adv, l_nat = distributed.batch_mean(
            len(y), neg_entropy(p_ta), neg_entropy(p_tn), loss_adv, loss_nat
        )
        # Entropy-Based Balance: computed with this batch's temperatures, used from the next one.
        b.update_temperatures(e_adv, e_nat, self.rate_factor)
        # Normalization Loss Balance: the weights already include this batch's losses.
        b.update_weights(l_adv, l_nat, self.rate_factor)
        loss = b.w_adv.to(loss_adv.dtype) * loss_adv + b.w_nat.to(loss_nat.dtype) * loss_nat
        return loss, {
            "loss": loss.detach(),
            "loss_adv": loss_adv.detach(),
            "loss_nat": loss_nat.detach(),
        }

    def status(self) -> dict[str, float]:
        return self.balance.status()

    def state_dict(self) -> dict:
        return self.balance.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.balance.load_state_dict(state)


def rates_of(b: Build) -> StepDecay:
    """The decay of a balance's rates: the distillation's milestones and gamma."""
    return StepDecay(tuple(b.cfg.optim.milestones), b.cfg.optim.gamma)


@register("bmtard")
def from_config(b: Build) -> Method:
    c, t = b.cfg, b.teachers
    balance = Balance.from_config(c.balance, b.device)
    return BMTARD(
        t[ROBUST], t[CLEAN], c.attack, balance, c.kl_reduction, b.execution, c.kl_scale,
        rates_of(b),
    )  # fmt: skip
