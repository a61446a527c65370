"""Projected gradient descent (ascent on a loss) in the L-inf ball."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

#: a loss to maximise: (logits (N, K)) -> scalar; it must be a sum over samples, so that each
#: sample's gradient does not depend on the others in the batch.
LossFn = Callable[[Tensor], Tensor]
#: the same over the input itself: (x_adv (N, C, H, W)) -> scalar, for objectives that run more
#: than one model (AdaAD's attack differentiates through the student and the teacher)
Objective = Callable[[Tensor], Tensor]

INITS = ("gaussian", "uniform", "uniform_unclamped", "none")


def pgd(
    model: nn.Module,
    x: Tensor,
    loss_fn: LossFn,
    *,
    eps: float,
    step_size: float,
    steps: int,
    init: str = "uniform",
    gaussian_std: float = 0.001,
    delta0: Tensor | None = None,
) -> Tensor:
    """L-inf PGD that maximises ``loss_fn(model(x_adv))`` (sign-gradient steps).

    x: (N, C, H, W) in [0, 1]. eps, step_size: pixel units (e.g. 8/255).
    init: 'uniform' starts at clip(x + U(-eps, eps), 0, 1); 'uniform_unclamped' at
    x + U(-eps, eps), not clipped before the first step (the ARD training attack); 'gaussian' at
    x + gaussian_std*N(0, 1), not clipped before the first step (the TRADES / B-MTARD training
    attack); 'none' at x.
    delta0: an explicit start offset (N, C, H, W) that replaces ``init`` (for cross-checks).
    Returns detached x_adv with |x_adv - x| <= eps and 0 <= x_adv <= 1.
    """
    # the gradient is with respect to x only: a DDP wrapper (several training processes) would
    # prepare its gradient all-reduce and copy buffers at every forward, so run its module
    if isinstance(model, DistributedDataParallel):
        model = model.module

    def objective(x_adv: Tensor) -> Tensor:
        return loss_fn(model(x_adv))

    return pgd_input(
        x,
        objective,
        eps=eps,
        step_size=step_size,
        steps=steps,
        init=init,
        gaussian_std=gaussian_std,
        delta0=delta0,
    )


def pgd_input(
    x: Tensor,
    objective: Objective,
    *,
    eps: float,
    step_size: float,
    steps: int,
    init: str = "uniform",
    gaussian_std: float = 0.001,
    delta0: Tensor | None = None,
) -> Tensor:
    """L-inf PGD that maximises ``objective(x_adv)``, whatever models it runs (``pgd``'s steps,
    starts and projection; the same arguments)."""
    if init not in INITS:
        raise ValueError(f"init = {init!r}: allowed are {', '.join(INITS)}")
    x = x.detach()
    if delta0 is not None:
        x_adv = (x + delta0).clamp(0, 1)
    elif init == "uniform_unclamped":  # the official ARD: clamped only after the first step
        x_adv = x + torch.empty_like(x).uniform_(-eps, eps)
    elif init == "uniform":
        x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    elif init == "gaussian":
        x_adv = x + gaussian_std * torch.randn_like(x)
    else:
        x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = objective(x_adv)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + step_size * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    if steps == 0:
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


def pgd_ce(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    init: str = "uniform",
    delta0: Tensor | None = None,
) -> Tensor:
    """PGD on the cross-entropy with the true labels y (N,), the standard untargeted attack."""

    def loss_fn(logits: Tensor) -> Tensor:
        return F.cross_entropy(logits, y, reduction="sum")

    return pgd(
        model, x, loss_fn, eps=eps, step_size=step_size, steps=steps, init=init, delta0=delta0
    )
