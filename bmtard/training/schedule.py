"""The learning-rate schedule of a training stage, and when to monitor (the decays themselves:
``bmtard.methods.decays``)."""

from __future__ import annotations

from bmtard.config.params import MonitorConfig, OptimConfig
from bmtard.methods.decays import cosine_exp, decay_factor


def lr_factor(epoch: int, cfg: OptimConfig) -> float:
    """The lr multiplier in force during ``epoch`` (1-based): the step decay at the milestones,
    or CIARD's ``cosine_exp`` from the middle of the run (epoch 150 of 300) to its end."""
    if cfg.schedule == "cosine_exp":
        return cosine_exp(epoch, cfg.epochs // 2, cfg.epochs)
    return decay_factor(epoch, cfg.milestones, cfg.gamma)


def should_monitor(epoch: int, epochs: int, cfg: MonitorConfig) -> bool:
    """Evaluate at epoch 1, every ``cfg.every`` epochs, every epoch from ``cfg.dense_from``, and at
    the last epoch (the official schedule is 1, every 20, every epoch from 215 on)."""
    return epoch == 1 or epoch % cfg.every == 0 or epoch >= cfg.dense_from or epoch == epochs
