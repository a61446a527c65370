"""ResNet-56 for CIFAR (He et al. 2016, 6n+2 layers with n = 9; 16/32/64 channels).

State_dict keys match ``zhaoshiji123/MTARD`` ``cifar10_nat_teacher_models/resnet.py`` (its
``CifarResNet``, from chenyaofo/pytorch-cifar-models), so MTARD's published clean ResNet-56 teacher
loads: ``conv1``, ``bn1``, ``layer1``..``layer3`` of blocks with ``conv1``/``bn1``/``conv2``/
``bn2``, ``fc``. The shortcut is "option B": a projection ``downsample`` = 1x1 conv + BN
(``downsample.0``, ``downsample.1``) in the first block of stages 2 and 3, identity elsewhere.
"""

import torch
import torch.nn.functional as F
from torch import nn

from bmtard.models._width import scaled


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut: (N, in_planes, H, W) -> (N, planes, H/s, W/s).

    The same block as ResNet-18's, but its projection is named ``downsample`` (an optional
    module) as in the MTARD ResNet-56 checkpoint, so that checkpoint loads key for key.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        out += x if self.downsample is None else self.downsample(x)
        return F.relu(out, inplace=True)


class CifarResNet(nn.Module):
    """CIFAR ResNet with 3 stages of ``blocks_per_stage`` BasicBlocks (9 -> ResNet-56): input
    (N, 3, 32, 32) in [0, 1] (no normalization inside) -> logits (N, num_classes). ``width``
    scales every channel count (1.0 = the reference model)."""

    def __init__(
        self, num_classes: int = 10, width: float = 1.0, blocks_per_stage: int = 9
    ) -> None:
        super().__init__()
        stem = scaled(16, width)
        self.conv1 = nn.Conv2d(3, stem, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        in_planes = stem
        stages = []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            planes = scaled(planes, width)
            blocks = [BasicBlock(in_planes, planes, stride)]
            blocks += [BasicBlock(planes, planes, 1) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            in_planes = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():  # the reference initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)
