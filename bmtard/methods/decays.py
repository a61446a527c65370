"""The decay shapes shared by the learning rates and the methods' own rates: the step decay at
milestones (the lr, and B-MTARD's balance rates with it) and CIARD's cosine x exp (its student's lr
from mid-run, its robust teacher's lr); and a stage's lr schedule made of them (``lr_factor``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from bmtard.config.schema import OptimConfig


def decay_factor(epoch: int, milestones: Sequence[int], gamma: float) -> float:
    """Multiplier in force during ``epoch`` (1-based): gamma per milestone already finished.

    Milestones [215, 260, 285] with gamma 0.1: epochs 1-215 -> 1, 216-260 -> 0.1, 261-285 -> 0.01,
    286- -> 0.001 (the official code decays "at the end of" epochs 215, 260 and 285).
    """
    return gamma ** sum(epoch > m for m in milestones)


@dataclass(frozen=True)
class StepDecay:
    """A step decay as a method keeps it: ``gamma`` per milestone already finished
    (``decay_factor``); B-MTARD's and CIARD's balance rates decay with the lr's milestones."""

    milestones: tuple[int, ...] = ()
    gamma: float = 0.1

    def factor(self, epoch: int) -> float:
        """The multiplier in force during ``epoch`` (1-based)."""
        return decay_factor(epoch, self.milestones, self.gamma)


def cosine_exp(epoch: int, start: int, end: int) -> float:
    """CIARD's smooth decay (its ``CIARD.py``), the one definition that the student's lr
    schedule (``bmtard.training.schedule``) and the robust teacher's share: 1 before ``start``,
    then (0.5 + 0.5 cos(pi t)) exp(-0.01 t^2) with t = (epoch - start) / (end - start), so 1 at
    ``start`` and about 0 at ``end`` (the student: 150 to 300; the teacher: 50 to 300)."""
    if epoch < start:
        return 1.0
    t = (epoch - start) / (end - start)
    return (0.5 + 0.5 * math.cos(math.pi * t)) * math.exp(-0.01 * t * t)


def lr_factor(epoch: int, cfg: OptimConfig) -> float:
    """The lr multiplier in force during ``epoch`` (1-based): the step decay at the milestones,
    or CIARD's ``cosine_exp`` from the middle of the run (epoch 150 of 300) to its end."""
    if cfg.schedule == "cosine_exp":
        return cosine_exp(epoch, cfg.epochs // 2, cfg.epochs)
    return decay_factor(epoch, cfg.milestones, cfg.gamma)
