"""SAT: PGD-AT (Madry et al.), cross-entropy on PGD-CE examples crafted with the model in eval
mode (BatchNorm frozen): the ``sat`` student (no teacher), and the robust teacher's
``robust_teacher.method: pgd_at``."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor, nn

from bmtard.attacks.pgd import pgd_ce
from bmtard.config.schema import TrainAttackConfig
from bmtard.methods.contract import Build, Method
from bmtard.methods.registry import register
from bmtard.runtime.execution import Execution, logits32


@dataclass
class PGDAT(Method):
    """Cross-entropy on PGD-CE examples crafted with the model in eval mode (BN frozen)."""

    attack: TrainAttackConfig
    execution: Execution = field(default_factory=Execution)

    def batch_loss(
        self, model: nn.Module, x: Tensor, y: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        a, ex = self.attack, self.execution
        model.eval()
        with ex.attacking(model) as target:
            x_adv = pgd_ce(target, ex.layout(x), y, **a.pgd_args())
        model.train()
        with ex.autocast():
            logits = logits32(model(x_adv))
        loss = F.cross_entropy(logits, y)
        acc = 100 * (logits.argmax(1) == y).float().mean()  # %
        return loss, {"loss": loss.detach(), "train_adv_acc": acc}


@register("sat")
def from_config(b: Build) -> Method:
    return PGDAT(b.cfg.attack, b.execution)
