"""Accuracy of a model on clean or attacked batches, sample by sample."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from bmtard.attacks.pgd import pgd_ce
from bmtard.config import MonitorConfig

#: (model, x, y) -> x_adv, with the attack's settings bound
Attack = Callable[[nn.Module, Tensor, Tensor], Tensor]


def correct(
    model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], attack: Attack | None = None
) -> Tensor:
    """Bool (N,) on the CPU: is each image classified correctly (after ``attack``, if given)?

    The model is put in eval mode; its mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    out = []
    try:
        for x, y in batches:
            if attack is not None:
                x = attack(model, x, y)
            with torch.no_grad():
                out.append((model(x).argmax(1) == y).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


def percent(mask: Tensor) -> float:
    """Share of True in a bool mask, in % (nan for an empty mask)."""
    return 100.0 * int(mask.sum()) / len(mask) if len(mask) else float("nan")


def monitor(
    model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], cfg: MonitorConfig
) -> dict[str, float]:
    """The in-training check: clean accuracy and, if cfg.pgd_steps > 0, PGD-CE accuracy (uniform
    start, eps and step in 1/255; the official monitor is PGD-20, step 0.003). Values in %."""
    out = {"clean_acc": percent(correct(model, batches))}
    if cfg.pgd_steps > 0:

        def attack(m: nn.Module, x: Tensor, y: Tensor) -> Tensor:
            return pgd_ce(
                m,
                x,
                y,
                eps=cfg.eps / 255,
                step_size=cfg.pgd_step_size / 255,
                steps=cfg.pgd_steps,
                init="uniform",
            )

        out["pgd_acc"] = percent(correct(model, batches, attack))
    return out
