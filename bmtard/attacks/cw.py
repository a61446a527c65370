"""CW-inf: the Carlini-Wagner margin loss maximised by L-inf PGD (as the ARD/RSLAD/MTARD evals)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bmtard.attacks.pgd import pgd


def cw_margin_loss(logits: Tensor, y: Tensor, kappa: float = 50.0) -> Tensor:
    """Sum over samples of -relu(z_y - max_{j != y} z_j + kappa); larger = closer to an error."""
    onehot = F.one_hot(y, logits.shape[1]).to(torch.bool)
    correct = logits[onehot]
    other = logits.masked_fill(onehot, float("-inf")).amax(dim=1)
    return -F.relu(correct - other + kappa).sum()


def cw_inf(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int = 30,
    kappa: float = 50.0,
    init: str = "uniform",
    delta0: Tensor | None = None,
) -> Tensor:
    """x: (N, C, H, W) in [0, 1]; y: (N,); eps, step_size in pixel units. Returns x_adv."""
    return pgd(
        model,
        x,
        lambda logits: cw_margin_loss(logits, y, kappa),
        eps=eps,
        step_size=step_size,
        steps=steps,
        init=init,
        delta0=delta0,
    )
