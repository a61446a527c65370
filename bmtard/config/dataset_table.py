"""The datasets of the paper's comparison, declared once (spec sections 1.1-1.3 and 9).

Every reader derives from ``DATASETS``: the allowed values of ``data.dataset``
(``bmtard.config.params``), the number of classes and the image size the download stage checks, the
per-dataset defaults that fill a ``null`` in ``params.yaml`` (the paper's student and teachers,
``*.arch``; the KL scale convention, ``distill.kl_scale``), and the labels of the comparison. Plain
data, no torch: the configuration imports it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset and the paper's settings on it.

    num_classes, image_size: what the download stage must find (images are image_size x
    image_size RGB). student, clean_teacher, robust_teacher: architecture names
    (``bmtard.models.ARCHS``) taken where ``distill.arch``, ``clean_teacher.arch`` or
    ``robust_teacher.arch`` is null. kl_scale: the factor the official code puts on the
    mean-over-batch-x-classes KL terms (``distill.kl_scale`` null; only the methods whose
    ``MethodSpec.kl_convention`` is true use it). source: where these choices come from.
    """

    name: str  # the value of data.dataset
    label: str  # how tables and plots name it
    num_classes: int
    image_size: int
    student: str
    clean_teacher: str
    robust_teacher: str
    kl_scale: float
    source: str


DATASETS = (
    DatasetSpec(
        "cifar10", "CIFAR-10", 10, 32, "resnet18", "resnet56", "wrn34_10", 1.0,
        "B-MTARD's official code: ResNet-18 student, ResNet-56 clean teacher, TRADES WRN-34-10 "
        "robust teacher; the KL helper's mean over batch x classes, unscaled",
    ),
    DatasetSpec(
        "cifar100", "CIFAR-100", 100, 32, "resnet18", "resnet56", "wrn70_16", 10.0,
        "MTARD's ECCV CIFAR-100 script and RSLAD's README: both KL terms x 10 (undoing part of "
        "the 1/100 of the mean over classes); robust teacher WRN-70-16 with Swish (Gowal et al., "
        "via RSLAD; its published weights are a checkpoint the user supplies); the clean teacher "
        "is pinned by no official script, ResNet-56 as on CIFAR-10 (ours)",
    ),
    DatasetSpec(
        "tiny_imagenet", "Tiny-ImageNet", 200, 64, "mobilenet_v2", "resnet56", "wrn34_10", 1.0,
        "no official code: MobileNetV2 student (third-party notes, uncertain); teachers unknown, "
        "CIFAR-10's architectures trained here; KL unscaled",
    ),
)  # fmt: skip

NAMES = tuple(d.name for d in DATASETS)
BY_NAME = {d.name: d for d in DATASETS}


def dataset(name: str) -> DatasetSpec:
    """The spec of ``name`` (one of ``NAMES``)."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}: allowed are {', '.join(NAMES)}") from None
