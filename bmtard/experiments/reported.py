"""Published results used as reference markers in the comparison (``bmtard.experiments.compare``),
with where each number comes from. Only what ``docs/bmtard-spec.md`` (section 7 and 1.3) records is
here, with its caveat: the B-MTARD paper's own baseline rows were not available.

Accuracies in %, AutoAttack at eps 8/255.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reported:
    """One published point: a method's clean and AutoAttack accuracy on a dataset and student."""

    dataset: str
    student: str  # architecture name as in bmtard.models
    method: str  # as tables name it
    clean: float
    autoattack: float
    source: str


PAPER = "B-MTARD paper, Table 3 (third-party notes)"
IGDM = "IGDM's reproduction (not the B-MTARD paper)"

REPORTED: tuple[Reported, ...] = (
    Reported("cifar10", "resnet18", "B-MTARD", 88.20, 47.44, PAPER),
    Reported("cifar100", "resnet18", "B-MTARD", 65.08, 23.98, PAPER),
    Reported("cifar10", "resnet18", "RSLAD", 83.59, 52.13, IGDM),
    Reported("cifar10", "resnet18", "AdaAD", 84.74, 52.79, IGDM),
    Reported("cifar10", "resnet18", "ARD", 85.04, 49.49, IGDM),
    Reported(
        "cifar10", "wrn34_10", "TRADES teacher", 84.9, 53.0, "RSLAD, approximate (unverified)"
    ),
)

#: asked for, but no number in the spec: left out rather than taken from elsewhere
MISSING = ("AdaAD+IGDM", "PGD-AT")


def reported(dataset: str) -> list[Reported]:
    """The published points on ``dataset``."""
    return [r for r in REPORTED if r.dataset == dataset]
