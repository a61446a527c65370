"""Accuracy in % and the in-training monitor (clean and PGD accuracy on the test split)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from bmtard.config.schema import MonitorConfig
from bmtard.data.splits import Split
from bmtard.evaluation.runner import Runner, Task, pgd_attack


def percent(mask: Tensor) -> float:
    """Share of True in a bool mask, in % (nan for an empty mask)."""
    return 100.0 * int(mask.sum()) / len(mask) if len(mask) else float("nan")


def monitor(
    model: nn.Module,
    test: Split,
    cfg: MonitorConfig,
    device: torch.device,
    seed: int = 0,
    on_batch: Callable[[str, int], None] | None = None,
) -> dict[str, float]:
    """The in-training check on the first ``cfg.n_images`` test images: clean accuracy and, if
    cfg.pgd_steps > 0, PGD-CE accuracy (uniform start, eps and step in 1/255; the official monitor
    is PGD-20, step 0.003). Values in %; the model's train/eval mode is left as it was.
    ``on_batch(task, index)`` is called after each batch (the training loop stops there)."""
    n = test.n_first(cfg.n_images)
    run = Runner(
        model, test, batch_size=cfg.batch_size, device=device, seed=seed, on_batch=on_batch
    )
    out = {"clean_acc": percent(run.mask(Task("clean", None, n)))}
    if cfg.pgd_steps > 0:
        attack = pgd_attack(cfg.eps, cfg.pgd_steps, cfg.pgd_step_size)
        out["pgd_acc"] = percent(run.mask(Task("pgd", attack, n)))
    return out
