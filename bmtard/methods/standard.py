"""Standard training on clean images (the clean teacher)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor, nn

from bmtard.methods.contract import Method
from bmtard.runtime.execution import Execution, logits32


@dataclass
class Standard(Method):
    """Cross-entropy on clean images, model in train mode. Logs are detached 0-dim tensors."""

    execution: Execution = field(default_factory=Execution)

    def batch_loss(
        self, model: nn.Module, x: Tensor, y: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        ex = self.execution
        model.train()
        with ex.autocast():
            logits = logits32(model(ex.layout(x)))
        loss = F.cross_entropy(logits, y)
        acc = 100 * (logits.argmax(1) == y).float().mean()  # %
        return loss, {"loss": loss.detach(), "train_acc": acc}
