"""Fast gradient sign method: one step of size eps from the clean point."""

from __future__ import annotations

from torch import Tensor, nn

from bmtard.attacks.pgd import pgd_ce


def fgsm(model: nn.Module, x: Tensor, y: Tensor, *, eps: float) -> Tensor:
    """x: (N, C, H, W) in [0, 1]; y: (N,) labels; eps in pixel units.

    Returns clip(x + eps * sign(grad_x CE), 0, 1).
    """
    return pgd_ce(model, x, y, eps=eps, step_size=eps, steps=1, init="none")
