"""Standard training on clean images (the clean teacher)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class Standard:
    """Cross-entropy on clean images, model in train mode."""

    def batch_loss(
        self, model: nn.Module, x: Tensor, y: Tensor, rate_factor: float = 1.0
    ) -> tuple[Tensor, dict[str, float]]:
        model.train()
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        acc = 100 * (logits.argmax(1) == y).float().mean()  # %
        return loss, {"loss": loss.item(), "train_acc": acc.item()}

    def status(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
