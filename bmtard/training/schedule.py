"""When a training stage monitors (its lr schedule: ``bmtard.methods.decays.lr_factor``)."""

from __future__ import annotations

from bmtard.config.schema import MonitorConfig


def should_monitor(epoch: int, epochs: int, cfg: MonitorConfig) -> bool:
    """Evaluate at epoch 1, every ``cfg.every`` epochs, every epoch from ``cfg.dense_from``, and at
    the last epoch (the official schedule is 1, every 20, every epoch from 215 on)."""
    return epoch == 1 or epoch % cfg.every == 0 or epoch >= cfg.dense_from or epoch == epochs
