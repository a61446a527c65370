"""Published results used as reference markers in the comparison (``bmtard.experiments.compare``),
with where each number comes from and how sure it is. Only what docs/bmtard-spec.md (sections 1.3
and 7) and the team's notes on the newer methods (docs/methods.md, "Published numbers") record is
here. Every number is from another paper's setup: other teachers (the LTD WRN-34-20 at 57.7 %
AutoAttack against the TRADES WRN-34-10 at 53.1 %), one seed, and mostly a checkpoint selected on
the test set; the B-MTARD paper's own baseline rows were not available.

Accuracies in %, AutoAttack at eps 8/255.
"""

from __future__ import annotations

from dataclasses import dataclass

#: how sure a number is: a table read by a third party and transcribed; the paper's abstract;
#: no primary source found; the teacher's numbers as remembered, not checked
SECOND_HAND, ABSTRACT, UNVERIFIED, RECALLED = (
    "third-party transcription",
    "abstract",
    "unverified",
    "recalled, unverified",
)


@dataclass(frozen=True)
class Reported:
    """One published point: a method's clean and AutoAttack accuracy on a dataset and student."""

    dataset: str
    student: str  # architecture name as in bmtard.models
    method: str  # as tables name it
    clean: float
    autoattack: float
    source: str
    certainty: str
    # the teachers the published row learned from (published names of
    # bmtard.config.teacher_table where the table has them)
    teachers: str = ""


PAPER = "B-MTARD paper, Table 3"
IGDM = "IGDM paper's table (its reproductions, LTD WRN-34-20 teacher on CIFAR-10)"
IGDM_C100 = "IGDM paper's table (BDM WRN-28-10 teacher)"
DGAD, PEERAID = "DGAD paper (WRN-34-10 teacher)", "PeerAiD paper (a peer, no teacher)"
CIARD = "CIARD paper (not read: a number without a primary source)"

#: the teachers of the published rows, as the notes give them
B_MTARD_C10 = "clean: MTARD_ResNet56 · robust: Zhang2019Theoretically"
B_MTARD_C100 = "clean: ResNet-56 (not pinned) · robust: Gowal2020Uncovering"
LTD = "robust: Chen2021LTD_WRN34_20"
BDM_C100 = "robust: Wang2023Better_WRN-28-10"

REPORTED: tuple[Reported, ...] = (
    Reported("cifar10", "resnet18", "B-MTARD", 88.20, 47.44, PAPER, SECOND_HAND, B_MTARD_C10),
    Reported("cifar100", "resnet18", "B-MTARD", 65.08, 23.98, PAPER, SECOND_HAND, B_MTARD_C100),
    Reported("cifar10", "resnet18", "RSLAD", 83.59, 52.13, IGDM, SECOND_HAND, LTD),
    Reported("cifar10", "resnet18", "AdaAD", 84.74, 52.79, IGDM, SECOND_HAND, LTD),
    Reported("cifar10", "resnet18", "ARD", 85.04, 49.49, IGDM, SECOND_HAND, LTD),
    Reported(
        "cifar10", "resnet18", "AdaAD+IGDM", 84.83, 54.02,
        IGDM + "; another reading gives this row to AdaIAD+IGDM", SECOND_HAND, LTD,
    ),
    Reported("cifar100", "resnet18", "AdaAD", 64.43, 28.06, IGDM_C100, SECOND_HAND, BDM_C100),
    Reported(
        "cifar100", "resnet18", "AdaAD+IGDM", 64.44, 30.32, IGDM_C100, SECOND_HAND, BDM_C100
    ),
    Reported(
        "cifar10", "resnet18", "DGAD", 87.58, 50.59, DGAD, SECOND_HAND,
        "robust: a WRN-34-10 of unstated training (its code's robust_teacher.pth)",
    ),
    Reported("cifar10", "resnet18", "PeerAiD", 85.01, 52.57, PEERAID, SECOND_HAND, "none (a peer)"),
    Reported(
        "cifar10", "resnet18", "CIARD", 88.87, 48.88, CIARD, UNVERIFIED,
        "clean: ResNet-56 · robust: TRADES WRN-34-10 (model_cifar_wrn.pt), fine-tuned",
    ),
    Reported(
        "cifar10", "wrn34_10", "TRADES teacher", 84.9, 53.0, "RSLAD, approximate", RECALLED,
        "(the teacher itself: Zhang2019Theoretically)",
    ),
)  # fmt: skip

#: asked for, but no number in the notes: left out rather than taken from elsewhere
MISSING = ("PGD-AT",)


def reported(dataset: str) -> list[Reported]:
    """The published points on ``dataset``."""
    return [r for r in REPORTED if r.dataset == dataset]
