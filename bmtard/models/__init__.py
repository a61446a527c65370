"""CIFAR-style classifiers by name.

Every model takes a float tensor (N, 3, H, W) with values in [0, 1] (32 x 32 for CIFAR, 64 x 64
for Tiny-ImageNet: the pooling before the classifier is global, which is the reference pooling
at 32 x 32) and returns logits (N, num_classes). Only DeepMind's Wide ResNets (``wrn70_16`` and
``dm_wrn*``, as RobustBench's ``DMWideResNet``) normalize inside, as their published weights
expect: ``wrn70_16`` with CIFAR-100's statistics, ``dm_wrn*_cifar10`` / ``_cifar100`` with the
dataset's their name gives. ``width`` scales every channel count (rounded,
at least 1); ``width=1.0`` gives exactly the reference architecture and state_dict keys/shapes, so
published checkpoints load.

The ReLUs after a BatchNorm and the residual sums run in place (``F.relu(..., inplace=True)``,
``out += shortcut``), as the official networks' ``nn.ReLU(inplace=True)``: no tensor autograd
keeps is overwritten (BatchNorm and convolutions save their inputs, ReLU its output), so the
forward and every gradient are those of the out-of-place forms bit for bit (``a + b`` and
``b + a`` are the same IEEE sum; ``tests/test_inplace.py``), with one allocation less per
activation. Swish stays out of place: its gradient needs its input.
"""

import math
import numbers
from collections.abc import Callable

from torch import nn

from bmtard.models.mobilenet_v2 import MobileNetV2
from bmtard.models.preact_resnet import PreActResNet18
from bmtard.models.resnet import ResNet18
from bmtard.models.resnet_cifar import CifarResNet
from bmtard.models.wideresnet import WideResNet
from bmtard.models.wideresnet_swish import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    WideResNetSwish,
)

__all__ = ["ARCHS", "build_model"]

_REGISTRY: dict[str, Callable[[int, float], nn.Module]] = {
    "resnet18": lambda c, w: ResNet18(num_classes=c, width=w),
    "preact_resnet18": lambda c, w: PreActResNet18(num_classes=c, width=w),
    "mobilenet_v2": lambda c, w: MobileNetV2(num_classes=c, width=w),
    "resnet56": lambda c, w: CifarResNet(num_classes=c, width=w, blocks_per_stage=9),
    "wrn34_10": lambda c, w: WideResNet(depth=34, num_classes=c, widen_factor=10, width=w),
    "wrn70_16": lambda c, w: WideResNetSwish(depth=70, num_classes=c, widen_factor=16, width=w),
    # RobustBench's WideResNet(sub_block1=False): the LTD teachers on CIFAR-10
    "wrn34_10_nosub": lambda c, w: WideResNet(34, c, 10, width=w, sub_block1=False),
    "wrn34_20_nosub": lambda c, w: WideResNet(34, c, 20, width=w, sub_block1=False),
    # RobustBench's DMWideResNet (SiLU / Swish), normalized with the named dataset's statistics
    "dm_wrn28_10_cifar10": lambda c, w: WideResNetSwish(28, c, 10, w, CIFAR10_MEAN, CIFAR10_STD),
    "dm_wrn28_10_cifar100": lambda c, w: WideResNetSwish(28, c, 10, w, CIFAR100_MEAN, CIFAR100_STD),
    "dm_wrn70_16_cifar10": lambda c, w: WideResNetSwish(70, c, 16, w, CIFAR10_MEAN, CIFAR10_STD),
}

ARCHS: tuple[str, ...] = tuple(_REGISTRY)


def build_model(arch: str, num_classes: int = 10, width: float = 1.0) -> nn.Module:
    """Build ``arch`` (one of ``ARCHS``) with fresh weights: input (N, 3, H, W) in [0, 1],
    output logits (N, num_classes). Raises ValueError for an unknown arch, a num_classes below 1
    or a width that is not a finite number > 0."""
    if not isinstance(arch, str) or arch not in _REGISTRY:
        raise ValueError(f"unknown arch {arch!r}: allowed are {', '.join(ARCHS)}")
    integral = isinstance(num_classes, numbers.Integral) and not isinstance(num_classes, bool)
    if not integral or num_classes < 1:
        raise ValueError(f"num_classes = {num_classes!r}: must be an integer >= 1")
    ok = isinstance(width, numbers.Real) and not isinstance(width, bool)
    if not ok or not math.isfinite(width) or width <= 0:
        raise ValueError(f"width = {width!r}: must be a finite number > 0")
    return _REGISTRY[arch](int(num_classes), float(width))
