"""The step schedule shared by the lr and B-MTARD's balance rates, and when to monitor."""

from __future__ import annotations

from collections.abc import Sequence

from bmtard.config.params import MonitorConfig


def decay_factor(epoch: int, milestones: Sequence[int], gamma: float) -> float:
    """Multiplier in force during ``epoch`` (1-based): gamma per milestone already finished.

    Milestones [215, 260, 285] with gamma 0.1: epochs 1-215 -> 1, 216-260 -> 0.1, 261-285 -> 0.01,
    286- -> 0.001 (the official code decays "at the end of" epochs 215, 260 and 285).
    """
    return gamma ** sum(epoch > m for m in milestones)


def should_monitor(epoch: int, epochs: int, cfg: MonitorConfig) -> bool:
    """Evaluate at epoch 1, every ``cfg.every`` epochs, every epoch from ``cfg.dense_from``, and at
    the last epoch (the official schedule is 1, every 20, every epoch from 215 on)."""
    return epoch == 1 or epoch % cfg.every == 0 or epoch >= cfg.dense_from or epoch == epochs
