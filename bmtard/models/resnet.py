"""ResNet-18 for CIFAR (3x3 stem, no max-pool), with the kuangliu/pytorch-cifar key names.

State_dict keys match ``zibojia/RSLAD`` ``cifar10_models/resnet.py`` (the file MTARD's students
use): ``conv1``, ``bn1``, ``layer1``..``layer4`` of blocks with ``conv1``/``bn1``/``conv2``/``bn2``
and a ``shortcut`` Sequential (1x1 conv + BN, only where the shape changes), then ``linear``.
"""

import torch
import torch.nn.functional as F
from torch import nn

from bmtard.models._pooling import global_avg_pool
from bmtard.models._width import scaled


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut: (N, in_planes, H, W) -> (N, planes, H/s, W/s)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out, inplace=True)


class ResNet18(nn.Module):
    """CIFAR ResNet-18: input (N, 3, 32, 32) in [0, 1] (no normalization inside) -> logits
    (N, num_classes). ``width`` scales every channel count (1.0 = the reference model)."""

    def __init__(self, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        stem = scaled(64, width)
        self.conv1 = nn.Conv2d(3, stem, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        in_planes = stem
        stages = []
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            planes = scaled(planes, width)
            stages.append(
                nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1))
            )
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = global_avg_pool(out)  # avg_pool2d(4) at 32 x 32, as the reference
        return self.linear(out)
