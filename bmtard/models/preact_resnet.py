"""Pre-activation ResNet-18 for CIFAR, with the kuangliu/pytorch-cifar key names.

State_dict keys match ``kuangliu/pytorch-cifar`` ``models/preact_resnet.py``: ``conv1``,
``layer1``..``layer4`` of blocks with ``bn1``/``conv1``/``bn2``/``conv2`` and, only where the shape
changes, ``shortcut.0`` (a 1x1 conv, no BN), then ``linear``. Like the reference there is no BN
before the pooling.
"""

import torch
import torch.nn.functional as F
from torch import nn

from bmtard.models._pooling import global_avg_pool
from bmtard.models._width import scaled


class PreActBlock(nn.Module):
    """BN-ReLU-conv twice plus a shortcut: (N, in_planes, H, W) -> (N, planes, H/s, W/s)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x), inplace=True)
        skip = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out), inplace=True))
        out += skip
        return out


class PreActResNet18(nn.Module):
    """CIFAR PreActResNet-18: input (N, 3, 32, 32) in [0, 1] (no normalization inside) -> logits
    (N, num_classes). ``width`` scales every channel count (1.0 = the reference model)."""

    def __init__(self, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        stem = scaled(64, width)
        self.conv1 = nn.Conv2d(3, stem, 3, stride=1, padding=1, bias=False)
        in_planes = stem
        stages = []
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            planes = scaled(planes, width)
            stages.append(
                nn.Sequential(
                    PreActBlock(in_planes, planes, stride), PreActBlock(planes, planes, 1)
                )
            )
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = global_avg_pool(out)  # avg_pool2d(4) at 32 x 32, as the reference
        return self.linear(out)
