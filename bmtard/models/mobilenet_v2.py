"""MobileNetV2 for CIFAR (stride 1 in the stem and in the second stage), kuangliu-style.

State_dict keys match ``kuangliu/pytorch-cifar`` ``models/mobilenetv2.py`` and
``zibojia/RSLAD`` ``cifar10_models/mobilenet_v2.py``: ``conv1``, ``bn1``, ``layers.<i>`` (blocks
with ``conv1``/``bn1``/``conv2``/``bn2``/``conv3``/``bn3`` and ``shortcut`` = 1x1 conv + BN where a
stride-1 block changes the channel count), ``conv2``, ``bn2``, ``linear``. The pooling is global
(as RSLAD's ``avg_pool2d(4)`` on the 4x4 map).
"""

import torch
import torch.nn.functional as F
from torch import nn

from bmtard.models._pooling import global_avg_pool
from bmtard.models._width import scaled


class Block(nn.Module):
    """Inverted residual (expand 1x1, depthwise 3x3, project 1x1):
    (N, in_planes, H, W) -> (N, out_planes, H/s, W/s); residual only when stride is 1."""

    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        planes = expansion * in_planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, 3, stride=stride, padding=1, groups=planes, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride == 1 and in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, bias=False),
                nn.BatchNorm2d(out_planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        if self.stride == 1:
            out += self.shortcut(x)
        return out


class MobileNetV2(nn.Module):
    """CIFAR MobileNetV2: input (N, 3, 32, 32) in [0, 1] (no normalization inside) -> logits
    (N, num_classes). ``width`` scales every channel count (1.0 = the reference model)."""

    # (expansion, out_planes, num_blocks, first stride); stride 1 in the second row for CIFAR
    cfg = (
        (1, 16, 1, 1),
        (6, 24, 2, 1),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        stem, head = scaled(32, width), scaled(1280, width)
        self.conv1 = nn.Conv2d(3, stem, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        blocks = []
        in_planes = stem
        for expansion, out_planes, num_blocks, stride in self.cfg:
            out_planes = scaled(out_planes, width)
            for i in range(num_blocks):
                blocks.append(Block(in_planes, out_planes, expansion, stride if i == 0 else 1))
                in_planes = out_planes
        self.layers = nn.Sequential(*blocks)
        self.conv2 = nn.Conv2d(in_planes, head, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(head)
        self.linear = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.layers(out)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = global_avg_pool(out)  # avg_pool2d(4) at 32 x 32, as the reference
        return self.linear(out)
